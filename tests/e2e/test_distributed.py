"""Data parallelism with Accelerate: 2 CPU processes (gloo) learn what 1 process learns, and resume across."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import torch
from helpers import REPO, learned, train_args


def _launch(num_processes: int, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # On a CPU-only machine accelerate starts several processes only through its torchrun launcher
    # (`--multi_gpu`); textinv then selects the gloo CPU backend itself.
    launcher = "--multi_gpu" if num_processes > 1 else "--cpu"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), launcher]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "textinv"]
    proc = subprocess.run(cmd + [str(a) for a in args], env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _args(model, data, out, per_process_batch: int, steps: int, *extra: str) -> list[str]:
    args = train_args(model, data, out, "--checkpointing_steps", "2", *extra, steps=steps)
    args[args.index("--train_batch_size") + 1] = str(per_process_batch)
    return args


def test_two_processes_match_one_and_checkpoints_cross_over(sd1_model, concept_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(1, _args(sd1_model, concept_dir, one, 2, 4))
    _launch(2, _args(sd1_model, concept_dir, two, 1, 4))  # same global batch: 2 x 1
    a, b = learned(one)["<cat-toy>"], learned(two)["<cat-toy>"]
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()

    # A checkpoint written by 2 processes resumes in 1, and one written by 1 resumes in 2.
    for src, n_proc, batch in ((two, 1, 2), (one, 2, 1)):
        cont = tmp_path / f"from-{src.name}"
        cont.mkdir()
        shutil.copytree(src / "checkpoint-2", cont / "checkpoint-2")
        _launch(n_proc, _args(sd1_model, concept_dir, cont, batch, 4, "--resume_from_checkpoint", "latest"))
        c = learned(cont)["<cat-toy>"]
        assert torch.allclose(a, c, rtol=1e-5, atol=1e-6), (src.name, (a - c).abs().max())


def test_two_processes_share_the_timed_cpu_convolution_choice(sd1_model, concept_dir, tmp_path):
    """With `--cpu_conv auto` only the main process times the kernels and the others wait for its choice
    (a broadcast over gloo): the run completes, times once, every process runs the same plan, and the
    checkpoints record it."""
    import json
    import re

    out = tmp_path / "auto"
    proc = _launch(2, _args(sd1_model, concept_dir, out, 1, 20, "--cpu_conv", "auto", "--debug"))
    assert proc.stderr.count("CPU convolutions, one step's calls:") == 1, proc.stderr[-3000:]
    plans = dict(re.findall(r"CPU kernel plan of process (\d): (\{.*\})", proc.stderr))
    assert set(plans) == {"0", "1"}, proc.stderr[-3000:]
    assert plans["0"] == plans["1"]
    chosen = re.search(r"convolutions, one step's calls: .*; using (\w+)", proc.stderr).group(1)
    state = json.loads((out / "checkpoint-20" / "training_state.json").read_text())
    assert state["kernel_plan"] == json.loads(plans["0"])
    assert state["kernel_plan"]["cpu_conv"] == chosen
    assert learned(out)["<cat-toy>"].isfinite().all()
