"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

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


def card_snippets(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a Markdown text, in order."""
    return re.findall(r"```(\w+)\n(.*?)\n```", text, flags=re.S)
