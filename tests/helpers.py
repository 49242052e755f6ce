"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import textinv
from textinv.cli import main

REPO = Path(__file__).resolve().parents[1]


def train_args(model: Path, data: Path, out: Path, *extra: str, steps: int = 4) -> list[str]:
    """A small but complete `textinv train` command line for the tiny fixtures."""
    return [
        "train",
        "--pretrained_model_name_or_path", str(model),
        "--train_data_dir", str(data),
        "--placeholder_token", "<cat-toy>",
        "--initializer_token", "toy",
        "--resolution", "32",
        "--train_batch_size", "2",
        "--max_train_steps", str(steps),
        "--learning_rate", "5e-3",
        "--lr_warmup_steps", "0",
        "--seed", "0",
        "--report_to", "none",
        "--output_dir", str(out),
        *extra,
    ]  # fmt: skip


def run_cli(args: list[str]) -> int:
    return main([str(a) for a in args])


def run_subprocess(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**kwargs.pop("env", os.environ), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "textinv", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=kwargs.pop("cwd", REPO),
        **kwargs,
    )


def learned(out: Path, name: str = "learned_embeds.safetensors"):
    return load_file(str(Path(out) / name))


def tiny_sdxl_pipeline(width_2: int = 48, num_layers: int = 2, hidden_act: str = "quick_gelu", scheduler=None):
    """A tiny SDXL-architecture pipeline in memory with random weights: CLIP text encoders 32 and `width_2` wide
    (the second with a projection), a UNet with SDXL's added text-and-time conditioning, the real CLIP tokenizer."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)

    def text_config(hidden: int) -> CLIPTextConfig:
        return CLIPTextConfig(hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                              num_hidden_layers=num_layers, vocab_size=49408, max_position_embeddings=77,
                              projection_dim=hidden, hidden_act=hidden_act)  # fmt: skip

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + width_2, cross_attention_dim=32 + width_2, norm_num_groups=32,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32,
    )  # fmt: skip
    tokenizer_dir = Path(textinv.__file__).parent / "toy" / "model" / "tokenizer"
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config(32)),
        text_encoder_2=CLIPTextModelWithProjection(text_config(width_2)),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        scheduler=scheduler
        or EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    )


def card_snippets(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a Markdown text, in order."""
    return re.findall(r"```(\w+)\n(.*?)\n```", text, flags=re.S)


# How the malloc probes (snippets run in a fresh interpreter: glibc settings are process-wide) begin: glibc's
# allocator through ctypes, and its `mallinfo2` statistics (`hblkhd`: bytes in blocks mapped on their own).
GLIBC_PROBE_PRELUDE = """
import ctypes, sys

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
"""


def env_without_malloc_settings(**extra: str) -> dict[str, str]:
    """This environment less any glibc malloc setting (`MALLOC_*`, `GLIBC_TUNABLES`), with `extra` added."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"} | extra


def cache_as_hub_repo(folder: Path, cache: Path, repo_id: str) -> Path:
    """Put a pipeline folder into a Hugging Face cache (`HF_HUB_CACHE` layout) as `repo_id`'s main snapshot."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return cache
