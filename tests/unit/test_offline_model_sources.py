"""Model sources where the Hub cannot be reached: a single-file checkpoint whose configs are not cached, a hub id
that is not. One line each, naming the command that fetches what is missing; that command, run against a stand-in
Hub, leaves what diffusers then reads offline."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli, run_subprocess, train_args
from ldm_layout import config_repo
from safetensors.torch import save_file
from stand_in_hub import folder_files, stand_in_hub

from textinv.models import single_file_config_repo

# One key (and shape) that diffusers' architecture rule reads for each family; a header is all it looks at.
ARCHITECTURE_KEYS = {
    "v1": ("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", (320, 768)),
    "v2": ("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", (320, 1024)),
    "xl_base": ("conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias", (8,)),
}


def _checkpoint(path: Path, architecture: str) -> Path:
    key, shape = ARCHITECTURE_KEYS[architecture]
    save_file({key: torch.zeros(shape)}, str(path))
    return path


@pytest.mark.parametrize("architecture", list(ARCHITECTURE_KEYS))
def test_offline_single_file_names_its_config_repo_in_one_line(
    architecture, concept_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _checkpoint(tmp_path / "my-model.safetensors", architecture)
    repo = config_repo(architecture)
    assert repo.split("/")[1] in {"stable-diffusion-v1-5", "stable-diffusion-2-1", "stable-diffusion-xl-base-1.0"}
    assert single_file_config_repo(model) == repo
    if architecture == "v2":
        return  # the v1 case's pipeline class and path, with the repo read above
    assert run_cli(train_args(model, concept_dir, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert f"configs of {repo}" in err and f" download {repo} --include " in err, err


def test_a_ckpt_file_gets_the_offline_line_without_a_repo(concept_dir, tmp_path, monkeypatch, capsys):
    """A pickled .ckpt has no header to read the architecture from cheaply: the line does without the repo."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tmp_path / "old.ckpt"
    key, shape = ARCHITECTURE_KEYS["v1"]
    torch.save({"state_dict": {key: torch.zeros(shape)}}, model)
    assert single_file_config_repo(model) is None
    assert run_cli(train_args(model, concept_dir, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert "Hub cannot be reached" in err and "run once online" in err and "\n" not in err, err


def test_the_printed_command_fetches_what_from_single_file_reads_offline(concept_dir, tmp_path, monkeypatch, capsys):
    repo = config_repo("v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_cli(train_args(_checkpoint(tmp_path / "m.safetensors", "v1"), concept_dir, tmp_path / "out")) == 2
    command = shlex.split(capsys.readouterr().err.strip().split("where it can be: ", 1)[1])
    assert command[1:3] == ["download", repo]  # `hf`, or `huggingface-cli` before huggingface_hub 0.34

    configs = {
        "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
        "unet/config.json": b'{"sample_size": 64}',
        "scheduler/scheduler_config.json": b'{"_class_name": "PNDMScheduler"}',
        "tokenizer/vocab.json": b'{"a": 0}',
        "tokenizer/merges.txt": b"#version: 0.2\n",
    }
    weights = {"unet/diffusion_pytorch_model.safetensors": b"\0" * 4096, "v1-5-pruned.safetensors": b"\1" * 4096}
    with stand_in_hub(repo, {**configs, **weights}, tmp_path / "hf") as (env, served):
        cli = Path(sys.executable).with_name(command[0])
        done = subprocess.run([str(cli), *command[1:]], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(served) == sorted(configs)  # the configs, none of the weights

    # What diffusers' from_single_file does next, offline: the same snapshot call, local files only.
    read = (
        "import sys; from huggingface_hub import snapshot_download;"
        "print(snapshot_download(sys.argv[1], local_files_only=True,"
        " allow_patterns=['**/*.json', '*.json', '*.txt', '**/*.txt', '**/*.model']))"
    )
    env["HF_HUB_OFFLINE"] = "1"
    found = subprocess.run([sys.executable, "-c", read, repo], env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    folder = Path(found.stdout.strip())
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(configs)


def test_an_uncached_hub_id_offline_names_the_line_that_fetches_it_and_that_line_works(
    sd1_model, concept_dir, tmp_path
):
    """Offline, a hub id not in the cache: one line with the Python that caches what diffusers loads of it; that
    line, run against a stand-in Hub, makes the same command train offline."""
    repo = "someone/tiny-sd"
    offline = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    args = train_args(repo, concept_dir, tmp_path / "out", steps=1)
    refused = run_subprocess(args, env=offline)
    assert refused.returncode == 2, refused.stderr[-2000:]
    line = refused.stderr.strip().splitlines()[-1]  # transformers 4 may print a one-time cache note before it
    assert line.startswith(f"textinv: error: model {repo} is not (fully) in the local Hugging Face cache"), line
    command = shlex.split(line.split("only the files diffusers loads): ", 1)[1].split(", or pass", 1)[0])
    assert command[:2] == ["python", "-c"]

    weights = folder_files(sd1_model)
    unused = {"unet/diffusion_pytorch_model.fp16.safetensors": b"\2" * 4096, "v1-5-pruned.ckpt": b"\3" * 4096}
    with stand_in_hub(repo, {**weights, **unused}, tmp_path / "hf") as (env, served):
        fetched = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=300)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert sorted(served) == sorted(weights)  # the pipeline's files, not the other variants and checkpoints
    trained = run_subprocess(args, env=offline)
    assert trained.returncode == 0, trained.stderr[-2000:]
