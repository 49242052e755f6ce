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


TINY = dict(
    num_images=64, vae_images=32, vae_steps=2, vae_batch_size=4, text_steps=2, text_batch_size=4,
    unet_steps=2, batch_size=4, warmup_steps=1,
)  # fmt: skip


def test_the_recipe_builds_an_sdxl_twin_that_plain_diffusers_loads(tmp_path):
    """`--family sdxl`: the same recipe saves a StableDiffusionXLPipeline with two encoders and SDXL's tokenizers."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    cfg = build.config_for("sdxl", **TINY)
    lines: list[str] = []
    out = build.build(cfg, tmp_path / "toy-xl", report=lines.append)
    assert any(line.startswith("text step") for line in lines) and any(line.startswith("text 2 step") for line in lines)
    for part in ("tokenizer", "tokenizer_2"):
        assert sorted(p.name for p in (out / part).iterdir()) == sorted(build.TOKENIZER_FILES)
    assert json.loads((out / "tokenizer_2" / "tokenizer_config.json").read_text())["pad_token"] == "!"
    assert json.loads((out / "build.json").read_text())["config"]["family"] == "sdxl"
    assert json.loads((out / "textinv.json").read_text()) == build.RECOMMENDED_SETTINGS
    pipe = StableDiffusionXLPipeline.from_pretrained(out)  # no dtype: every part loads in float32
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype, pipe.text_encoder_2.dtype} == {torch.float32}
    assert type(pipe.text_encoder) is CLIPTextModel and type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    assert (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size) == (64, 96)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == 64 + 96
    assert pipe.config.force_zeros_for_empty_prompt
    reference = CLIPTokenizer.from_pretrained(build.TOKENIZER_SOURCE)
    padded = pipe.tokenizer_2("a red star", padding="max_length", max_length=77).input_ids
    assert padded[:5] == reference("a red star").input_ids and set(padded[5:]) == {0}  # "!" is id 0
    image = pipe("a red star", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total <= 30 * 2**20


def test_the_sdxl_twins_unet_is_trained_on_the_conditioning_diffusers_sdxl_pipeline_computes():
    """Penultimate states of both encoders, text_encoder_2's projected pooled output, the 32 px add_time_ids;
    a dropped caption is zeros, as the pipeline's unconditional branch (`force_zeros_for_empty_prompt`)."""
    from helpers import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    hidden, kwargs = build.conditioner(build.config_for("sdxl"), pipe)(["a red star on a blue background", ""])
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            "a red star on a blue background", device="cpu", do_classifier_free_guidance=True
        )
    time_ids = pipe._get_add_time_ids(
        (32, 32), (0, 0), (32, 32), torch.float32, text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim
    )
    added = kwargs["added_cond_kwargs"]
    torch.testing.assert_close(hidden, torch.cat([embeds, negative]))  # batched: float rounding differs
    torch.testing.assert_close(added["text_embeds"], torch.cat([pooled, negative_pooled]))
    torch.testing.assert_close(added["time_ids"], time_ids.repeat(2, 1), rtol=0, atol=0)
    assert not negative.any() and not negative_pooled.any()
