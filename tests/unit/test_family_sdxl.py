"""The SDXL family adapter: which encoders get rows, SDXL's size/crop conditioning, refusals (no training run)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from helpers import tiny_sdxl_pipeline

from textinv.backends.pytorch import adamw_class
from textinv.errors import TextinvError
from textinv.families import adapter_for
from textinv.families.sdxl import StableDiffusionXLAdapter, crop_top_left, time_ids


def test_time_ids_are_original_size_crop_corner_and_target_as_diffusers_sdxl_script():
    # diffusers resizes to resolution x resolution before its crop: the corner is (0, 0); (h, w) comes first.
    assert time_ids([(40, 48), (1024, 768)], 32, center_crop=False).tolist() == [
        [48, 40, 0, 0, 32, 32],
        [768, 1024, 0, 0, 32, 32],
    ]
    # --center_crop: the centre square of the image, corner given in the frame whose short side is the resolution
    assert crop_top_left((1024, 768), 512, center_crop=True) == (0, 85)
    assert crop_top_left((600, 900), 300, center_crop=True) == (75, 0)
    assert crop_top_left((64, 64), 32, center_crop=True) == (0, 0)


def test_adapter_puts_the_token_in_both_tokenizers_and_conditions_like_the_reference():
    pipe = tiny_sdxl_pipeline()
    family = adapter_for(pipe)
    assert isinstance(family, StableDiffusionXLAdapter) and family.name == "sdxl" and family.dims == (32, 48)
    family.add_placeholder("<xl>", 2, "toy")
    assert [tuple(r.shape) for r in family.rows] == [(2, 32), (2, 48)]
    tokenizers = (pipe.tokenizer, pipe.tokenizer_2)
    for tokenizer, encoder, rows in zip(tokenizers, family.text_encoders, family.rows, strict=True):
        init = encoder.get_input_embeddings().weight[tokenizer.encode("toy", add_special_tokens=False)[0]]
        assert "<xl>_1" in tokenizer.get_vocab() and torch.equal(rows[1], init)
    family.set_images([(40, 48), (64, 32)], 32, center_crop=False)
    ids = family.tokenize(["a <xl> <xl>_1", "a dog"])
    cond = family.condition(ids, torch.tensor([1, 0]), torch.float32)
    added = cond.unet_kwargs["added_cond_kwargs"]
    assert cond.hidden_states.shape == (2, 77, 32 + 48)
    assert added["text_embeds"].shape == (2, 48)
    assert added["time_ids"].tolist() == [[32, 64, 0, 0, 32, 32], [48, 40, 0, 0, 32, 32]]
    # penultimate layer of each encoder, side by side; the pooled, projected output of the second
    out_1 = pipe.text_encoder(ids[0], output_hidden_states=True)
    out_2 = pipe.text_encoder_2(ids[1], output_hidden_states=True)
    assert torch.equal(cond.hidden_states, torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1))
    assert torch.equal(added["text_embeds"], out_2.text_embeds)
    # gradients reach both encoders' rows
    cond.hidden_states.sum().add(added["text_embeds"].sum()).backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in family.rows)


def test_an_initializer_that_is_not_one_token_in_each_tokenizer_names_the_tokenizer():
    pipe = tiny_sdxl_pipeline()
    pipe.tokenizer.add_tokens(["zzqxword"])  # one token in the first tokenizer only
    family = adapter_for(pipe)
    with pytest.raises(TextinvError, match=r"'zzqxword' is \d+ tokens .* in tokenizer_2, not one"):
        family.add_placeholder("<xl>", 1, "zzqxword")
    assert "<xl>" not in pipe.tokenizer.get_vocab(), "nothing is changed before every tokenizer agreed"
    with pytest.raises(TextinvError, match=r"'toyzzqx' is \d+ tokens \[.*\] in tokenizer, not one"):
        family.add_placeholder("<xl>", 1, "toyzzqx")
    family.add_placeholder("<xl>", 2, "red car")  # A1111's rule: one word per vector, in both encoders
    red, car = (pipe.tokenizer_2.encode(w, add_special_tokens=False)[0] for w in ("red", "car"))
    weight = pipe.text_encoder_2.get_input_embeddings().weight
    assert torch.equal(family.rows[1], torch.stack([weight[red], weight[car]]))


def test_use_8bit_adam_needs_bitsandbytes(monkeypatch):
    assert adamw_class(False) is torch.optim.AdamW
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(TextinvError, match="pip install bitsandbytes"):
        adamw_class(True)

    class AdamW8bit(torch.optim.AdamW):
        pass

    fake = types.SimpleNamespace(optim=types.SimpleNamespace(AdamW8bit=AdamW8bit))
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    assert adamw_class(True) is AdamW8bit


def test_prompts_past_the_encoder_length_are_cut_with_one_warning(caplog):
    family = adapter_for(tiny_sdxl_pipeline())
    family.add_placeholder("<xl>", 1, "toy")
    long_tail = " ".join(["red"] * 90)
    with caplog.at_level("WARNING"):
        family.tokenize(["a <xl> dog", "a dog"])
    assert not caplog.records  # short prompts: nothing said
    with caplog.at_level("WARNING"):
        ids = family.tokenize([f"a <xl> {long_tail}", f"{long_tail} a <xl>", "a <xl>"])
    assert all(t.shape == (3, 77) for t in ids)
    (record,) = caplog.records
    message = record.getMessage()
    assert message.startswith("2 training prompt(s) are longer than the text encoder's 77 tokens")
    assert "in 1 the placeholder is cut off" in message


def test_tokenizer_name_replaces_both_sdxl_tokenizers_or_says_what_it_needs(tmp_path):
    from textinv.train import replace_tokenizers

    source = tiny_sdxl_pipeline()
    source.tokenizer.add_tokens(["<one>"])
    source.tokenizer_2.add_tokens(["<two>"])
    source.tokenizer.save_pretrained(tmp_path / "tok" / "tokenizer")
    source.tokenizer_2.save_pretrained(tmp_path / "tok" / "tokenizer_2")
    pipe = tiny_sdxl_pipeline()
    replace_tokenizers(pipe, str(tmp_path / "tok"))
    assert "<one>" in pipe.tokenizer.get_vocab() and "<two>" in pipe.tokenizer_2.get_vocab()
    assert pipe.tokenizer_2.pad_token == source.tokenizer_2.pad_token
    with pytest.raises(TextinvError, match=r"SDXL model has two tokenizers; .* tokenizer/ and tokenizer_2/ inside"):
        replace_tokenizers(pipe, str(tmp_path / "tok" / "tokenizer"))  # a single tokenizer's folder
