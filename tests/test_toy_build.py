"""The toy model's recipe: a few steps of it save a plain StableDiffusionPipeline folder, small and fp16."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from textinv.toy import build


def test_recipe_saves_a_loadable_fp16_pipeline_with_recommended_settings(tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    cfg = build.BuildConfig(
        num_images=64, vae_images=32, vae_steps=2, vae_batch_size=4, unet_steps=2, batch_size=4, warmup_steps=1
    )
    out = build.build(cfg, tmp_path / "toy")
    assert not (out / "tokenizer" / "tokenizer.json").exists()
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == sorted(build.TOKENIZER_FILES)
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in list(f.keys())[:5])
    settings = json.loads((out / "textinv.json").read_text())
    assert settings["train"]["resolution"] == 32 and settings["generate"]["height"] == 32
    assert json.loads((out / "build.json").read_text())["config"]["seed"] == 0
    pipe = StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32)
    reference = CLIPTokenizer.from_pretrained(build.TOKENIZER_SOURCE)
    assert pipe.tokenizer("a red star").input_ids == reference("a red star").input_ids
    assert len(pipe.tokenizer("a red star").input_ids) == 5
    image = pipe("a red star", height=32, width=32, num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total <= 30 * 2**20
