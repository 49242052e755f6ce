"""Ctrl-C during `textinv train`: the step is finished and saved, one line says how to continue, and the
continued run ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import torch
from helpers import REPO, learned, run_subprocess, train_args


def test_ctrl_c_saves_a_checkpoint_and_the_printed_command_continues_bitwise(sd1_model, concept_dir, tmp_path):
    steps = 40
    # Fixed kernels: this test is about stopping and resuming; seeded `auto` plans are tested with the planner.
    kernels = ("--cpu_conv", "onednn", "--cpu_matmul", "blas")
    whole = tmp_path / "whole"
    assert run_subprocess(train_args(sd1_model, concept_dir, whole, *kernels, steps=steps)).returncode == 0

    out = tmp_path / "interrupted"
    args = train_args(sd1_model, concept_dir, out, *kernels, "--save_steps", "1", steps=steps)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "textinv", *map(str, args)], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "learned_embeds-steps-2.safetensors").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("textinv: stopped at step "), last
    step = int(last.split("stopped at step ")[1].split(";")[0])
    assert 2 <= step < steps
    assert (out / f"checkpoint-{step}").is_dir()
    assert (out / f"learned_embeds-steps-{step}.safetensors").is_file()
    assert not (out / "learned_embeds.safetensors").exists()
    assert "Traceback" not in err

    command = shlex.split(last.split("continue with: ", 1)[1])
    assert command[:2] == ["textinv", "train"] and command[-2:] == ["--resume_from_checkpoint", "latest"]
    resumed = run_subprocess(command[1:])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.equal(learned(out)["<cat-toy>"], learned(whole)["<cat-toy>"])
