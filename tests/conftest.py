"""Shared fixtures: tiny random Stable Diffusion pipelines (real classes, real CLIP tokenizer).

Built once per test session, saved in diffusers format and loaded back through the same code users hit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "src" / "textinv" / "toy" / "model" / "tokenizer"

torch.set_num_threads(int(os.environ.get("TEXTINV_TEST_THREADS", "2")))


def build_tiny_pipeline(out_dir: Path, *, v_prediction: bool, seed: int = 0) -> Path:
    """Save a tiny SD-1-like (epsilon) or SD-2-like (v-prediction) pipeline with random weights."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    hidden = 32
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=(2, 4) if v_prediction else 8,
        use_linear_projection=v_prediction,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=32,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=hidden,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=77,
            hidden_act="gelu" if v_prediction else "quick_gelu",
            projection_dim=hidden,
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    scheduler_cls = DDIMScheduler if v_prediction else PNDMScheduler
    scheduler = scheduler_cls(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction" if v_prediction else "epsilon",
        steps_offset=1,
        **({"clip_sample": False, "set_alpha_to_one": False} if v_prediction else {"skip_prk_steps": True}),
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="session")
def sd1_model(tmp_path_factory) -> Path:
    """A tiny SD-1-like pipeline folder (epsilon prediction, 32 px images, 16 px latents)."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("sd1") / "tiny-sd1", v_prediction=False)


@pytest.fixture(scope="session")
def sd2_model(tmp_path_factory) -> Path:
    """A tiny SD-2-like pipeline folder (v-prediction, linear attention projections)."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("sd2") / "tiny-sd2", v_prediction=True)


def write_concept_images(folder: Path, n: int = 4, size: int = 40, seed: int = 0) -> Path:
    """Write `n` small distinct RGB images of a coloured square, as a user's concept folder."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        colour = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=g))
        img = Image.new("RGB", (size, size + 8), (255, 255, 255))
        x = 4 + i * 3
        img.paste(Image.new("RGB", (16, 16), colour), (x, x))
        img.save(folder / f"img{i}.png")
    return folder


@pytest.fixture()
def concept_dir(tmp_path) -> Path:
    return write_concept_images(tmp_path / "concept")


def pytest_collection_modifyitems(items):
    """Everything under tests/e2e/ runs the real recipe end to end: marked `slow` (CI runs them; `-m "not slow"`
    gives the quick unit suite)."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.slow)
