"""The embedded toy model folder as other tools see it: plain diffusers loads it and generates."""

from __future__ import annotations

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
