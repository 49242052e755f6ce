"""The embedded toy model folder as other tools see it: plain diffusers loads it and generates."""

from __future__ import annotations

import dataclasses
import json

import torch

from textinv.models import TOY_MODEL_DIR
from textinv.toy import build


def test_plain_diffusers_loads_the_toy_folder_without_a_dtype_and_generates():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(TOY_MODEL_DIR)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    image = pipe("a red star", num_inference_steps=1, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


def test_the_text_encoder_is_stored_in_fp16_and_marked_to_load_in_float32():
    from safetensors import safe_open

    config = json.loads((TOY_MODEL_DIR / "text_encoder" / "config.json").read_text())
    assert config["dtype"] == "float32"
    with safe_open(str(TOY_MODEL_DIR / "text_encoder" / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_a_rebuild_marks_its_text_encoder_to_load_in_float32(tmp_path):
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "config.json").write_text(json.dumps({"dtype": "float16", "hidden_size": 8}))
    build.load_text_encoder_in_float32(tmp_path)
    assert json.loads((tmp_path / "text_encoder" / "config.json").read_text()) == {"dtype": "float32", "hidden_size": 8}


def test_plain_diffusers_loads_the_sdxl_twin_without_a_dtype_and_generates():
    from diffusers import StableDiffusionXLPipeline

    from textinv.models import toy_model_dir

    folder = toy_model_dir("sdxl")
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype, pipe.text_encoder_2.dtype} == {torch.float32}
    assert pipe.unet.config.addition_embed_type == "text_time" and pipe.tokenizer_2.pad_token == "!"
    image = pipe("a red star on a blue background", num_inference_steps=1, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    assert json.loads((folder / "textinv.json").read_text()) == build.RECOMMENDED_SETTINGS
    record = json.loads((folder / "build.json").read_text())
    assert record["config"] == json.loads(json.dumps(dataclasses.asdict(build.config_for("sdxl"))))
    assert record["seconds"] <= 3600  # built in under an hour on the 2-core machine
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 30 * 2**20


def test_every_shipped_text_encoder_keeps_its_weights_where_transformers_4_and_5_both_read_them():
    """transformers 5 saves a CLIPTextModel without `text_model.`; transformers 4 (>= 4.40 is supported) would load
    none of those weights and run a random text encoder. The shipped files use the layout both versions read."""
    from safetensors import safe_open
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from textinv.models import toy_model_dir

    for family, folder in (("sd1", "text_encoder"), ("sdxl", "text_encoder"), ("sdxl", "text_encoder_2")):
        path = toy_model_dir(family) / folder
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            assert all(k.startswith(build.CLIP_TOP_LEVEL_KEYS) for k in f.keys()), (family, folder)
        cls = CLIPTextModelWithProjection if folder == "text_encoder_2" else CLIPTextModel
        _, info = cls.from_pretrained(path, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (family, folder, info)


def test_a_rebuild_stores_the_text_encoder_under_text_model_with_the_same_values(tmp_path):
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=100, max_position_embeddings=8))  # fmt: skip
    model.save_pretrained(tmp_path)  # whatever layout this transformers writes
    before = load_file(tmp_path / "model.safetensors")
    build.store_clip_keys_for_transformers_4(tmp_path)
    after = load_file(tmp_path / "model.safetensors")
    prefixed = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in before.items()}
    assert prefixed.keys() == after.keys() and all(torch.equal(after[k], v) for k, v in prefixed.items())
    assert build.store_clip_keys_for_transformers_4(tmp_path) is False  # already in that layout: left as it is
    ids = torch.tensor([[1, 5, 7, 2]])
    reloaded = CLIPTextModel.from_pretrained(tmp_path)
    assert torch.equal(reloaded(ids).last_hidden_state, model(ids).last_hidden_state)
