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
        num_images=64, vae_images=32, vae_steps=2, vae_batch_size=4, text_steps=2, text_batch_size=4,
        unet_steps=2, batch_size=4, warmup_steps=1,
    )  # fmt: skip
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


def test_caption_labels_name_only_what_the_caption_says():
    from textinv.toy import world

    scene = world.Scene("star", "red", "blue", 16.0, 16.0, 22.0, 0.0, (0, 0, 0))
    shape, red = world.SHAPES.index("star"), list(world.COLOURS).index("red")
    blue = list(world.BACKGROUNDS).index("blue")
    unsaid = (len(world.SHAPES), len(world.COLOURS), len(world.BACKGROUNDS))
    assert build.caption_labels(scene, "a red star on a blue background") == (shape, red, blue)
    assert build.caption_labels(scene, "a photo of a star") == (shape, unsaid[1], unsaid[2])
    assert build.caption_labels(scene, "a red star in the style of blue") == (shape, red, blue)
    assert build.caption_labels(scene, "a painting in the style of blue") == (unsaid[0], unsaid[1], blue)
    assert build.caption_labels(scene, "a star on blue") == (shape, unsaid[1], blue)


def test_text_phase_learns_to_read_captions():
    """Phase 2's loss falls fast: the encoder learns to tell shape, colour and background words apart."""
    from transformers import CLIPTokenizer

    from textinv.toy import world

    cfg = build.BuildConfig(text_steps=100, text_batch_size=32, text_learning_rate=3e-3, text_hidden=32, text_layers=1)
    scenes = list(world.scenes(200, seed=1))
    lines: list[str] = []
    build.pretrain_text_encoder(cfg, scenes, CLIPTokenizer.from_pretrained(build.TOKENIZER_SOURCE), lines.append)
    losses = [float(line.split(" loss ")[1].split()[0]) for line in lines]
    assert len(losses) == 2 and losses[-1] < 0.5 * losses[0], lines


def test_the_shipped_textinv_json_is_the_recipes():
    """The toy model's settings file is what `build` writes (edited in one place: build.RECOMMENDED_SETTINGS)."""
    from textinv.models import TOY_MODEL_DIR
    from textinv.toy import build

    assert json.loads((TOY_MODEL_DIR / "textinv.json").read_text()) == build.RECOMMENDED_SETTINGS
