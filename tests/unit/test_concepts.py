"""`textinv.load_concept` on real (tiny) diffusers pipelines, and diffusers' own loader on our files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_sdxl_pipeline

import textinv
from textinv.embeddings import Embedding, save_a1111_embedding, save_diffusers_embedding, write_embedding
from textinv.errors import TextinvError

DIM = 32  # the tiny fixtures' text width


@pytest.fixture()
def pipe(sd1_model):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(sd1_model, safety_checker=None, requires_safety_checker=False)


def _vectors(n=2, dim=DIM, seed=0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * 0.3


def _rows(pipe, tokens: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach()


def _training_output(folder: Path, token: str, vec: torch.Tensor) -> Path:
    """The layout `textinv train` writes (see DESIGN.md), minus the checkpoints."""
    save_diffusers_embedding(folder / "learned_embeds.safetensors", token, vec, metadata={"step": "10"})
    save_diffusers_embedding(folder / "learned_embeds.bin", token, vec)
    (folder / "token_identifier.txt").write_text(token)
    (folder / "type_of_concept.txt").write_text("object")
    return folder


def test_load_concept_from_training_folder_expands_multi_vector_tokens(pipe, tmp_path):
    vec = _vectors(3)
    token = textinv.load_concept(pipe, _training_output(tmp_path / "out", "<cat-toy>", vec))
    assert token == "<cat-toy>"
    assert torch.equal(_rows(pipe, ["<cat-toy>", "<cat-toy>_1", "<cat-toy>_2"]), vec)
    # diffusers rewrites the prompt to use every vector
    assert pipe.maybe_convert_prompt("a <cat-toy> toy", pipe.tokenizer) == "a <cat-toy> <cat-toy>_1 <cat-toy>_2 toy"


def test_load_concept_from_single_file_with_renamed_token(pipe, tmp_path):
    vec = _vectors(1, seed=3)
    path = save_a1111_embedding(tmp_path / "style.pt", "<old>", vec)
    assert textinv.load_concept(pipe, path, token="<new-style>") == "<new-style>"
    assert torch.equal(_rows(pipe, ["<new-style>"]), vec)


def test_load_concept_from_hub_cache(pipe, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    repo = tmp_path / "hub" / "models--sd-concepts-library--cat-toy"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    vec = _vectors(1, seed=5)
    torch.save({"<cat-toy>": vec[0]}, snapshot / "learned_embeds.bin")  # the concepts library's 1-D layout
    (snapshot / "token_identifier.txt").write_text("<cat-toy>")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # Older huggingface_hub (0.23, our lower bound) binds the name at import: point that copy there too.
    monkeypatch.setattr("huggingface_hub._snapshot_download.HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert textinv.load_concept(pipe, "sd-concepts-library/cat-toy") == "<cat-toy>"
    assert torch.equal(_rows(pipe, ["<cat-toy>"]), vec)
    with pytest.raises(TextinvError, match="not in the local cache|neither a local path"):
        textinv.load_concept(pipe, "sd-concepts-library/not-downloaded")


def test_wrong_family_is_refused_naming_both(pipe, tmp_path):
    for vec, family in ((_vectors(1, 768), "sd1 (768)"), (_vectors(1, 1024), "sd2 (1024)")):
        path = save_diffusers_embedding(tmp_path / f"{family[:3]}.safetensors", "<x>", vec)
        with pytest.raises(TextinvError) as err:
            textinv.load_concept(pipe, path)
        message = str(err.value)
        assert family in message and f"custom-{DIM} ({DIM})" in message and "\n" not in message
    pair = Embedding("<xl>", (_vectors(1, 768), _vectors(1, 1280)), "sdxl")
    with pytest.raises(TextinvError, match=r"sdxl \(768\+1280\)"):
        textinv.load_concept(pipe, pair)
    assert "<x>" not in pipe.tokenizer.get_vocab()  # nothing half-loaded


def test_token_already_present_is_refused(pipe, tmp_path):
    path = save_diffusers_embedding(tmp_path / "c.safetensors", "<c>", _vectors(2))
    textinv.load_concept(pipe, path)
    with pytest.raises(TextinvError, match="already in the model's vocabulary"):
        textinv.load_concept(pipe, path)
    with pytest.raises(TextinvError, match="'cat</w>'|already"):
        textinv.load_concept(pipe, path, token="cat</w>")


def test_non_finite_vectors_are_refused(pipe, tmp_path):
    vec = _vectors(1)
    vec[0, 3] = float("nan")
    path = save_diffusers_embedding(tmp_path / "nan.safetensors", "<nan>", vec)
    with pytest.raises(TextinvError, match="NaN"):
        textinv.load_concept(pipe, path)


def test_every_file_we_write_loads_with_diffusers_own_loader_and_generates(pipe, tmp_path):
    """The client that matters: StableDiffusionPipeline.load_textual_inversion, then a generation."""
    written = []
    for i, (name, to) in enumerate(
        [("d.safetensors", "diffusers"), ("d.bin", "diffusers"), ("a.pt", "a1111"), ("a.safetensors", "a1111")]
    ):
        vec = _vectors(2, seed=10 + i)
        path = write_embedding(tmp_path / name, Embedding(f"<c{i}>", (vec,), "diffusers"), to)
        written.append((path, f"<c{i}>", vec))
    for path, token, vec in written:
        if path.suffix == ".safetensors" and "a" in path.stem:
            pipe.load_textual_inversion(str(path), token=token)  # emb_params carries no name, like A1111's
        else:
            pipe.load_textual_inversion(str(path))  # token from the file (diffusers key, or A1111 `name`)
        assert torch.equal(_rows(pipe, [token, f"{token}_1"]), vec), path.name
    from textinv.sample import generate_images

    prompt = " ".join(token for _, token, _ in written)
    image = generate_images(pipe, prompt, num_images=1, num_inference_steps=1, progress=False)[0]
    assert image.size == (32, 32)


def test_sdxl_pair_loads_into_both_text_encoders_and_generates(tmp_path):
    from safetensors.torch import save_file

    from textinv.sample import generate_images

    pipe = tiny_sdxl_pipeline()
    clip_l, clip_g = _vectors(2, 32, seed=1), _vectors(2, 48, seed=2)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(tmp_path / "xl-toy.safetensors"))
    assert textinv.load_concept(pipe, tmp_path / "xl-toy.safetensors", token="<xl-toy>") == "<xl-toy>"
    for tokenizer, encoder, vec in ((pipe.tokenizer, pipe.text_encoder, clip_l),
                                    (pipe.tokenizer_2, pipe.text_encoder_2, clip_g)):  # fmt: skip
        ids = tokenizer.convert_tokens_to_ids(["<xl-toy>", "<xl-toy>_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids].detach(), vec)
    image = generate_images(pipe, "a <xl-toy>", num_images=1, num_inference_steps=1, progress=False)[0]
    assert image.size == (32, 32)
    # Unguided steps run the prompt's half of SDXL's batch (its pooled text and size conditioning halved too).
    kwargs = dict(num_images=1, num_inference_steps=2, progress=False, seed=4)
    unguided = generate_images(pipe, "a <xl-toy>", guidance_scale=5.0, skip_early_cfg=1.0, **kwargs)[0]
    plain = generate_images(pipe, "a <xl-toy>", guidance_scale=1.0, **kwargs)[0]
    assert np.array_equal(np.asarray(unguided), np.asarray(plain))
    single = save_diffusers_embedding(tmp_path / "sd1.safetensors", "<one>", _vectors(1, 32))
    with pytest.raises(TextinvError, match=r"custom-32 \(32\) but the model is custom-32\+48 \(32\+48\)"):
        textinv.load_concept(pipe, single)
