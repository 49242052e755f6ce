"""Same flags and seed give the same bits whatever else the machine is doing: concurrent runs, a run alone, and a
run killed with -9 and resumed while a busy process competes for the cores (issue 23)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from helpers import REPO, learned, train_args

# Batch 16 makes the placeholder rows' backward multi-threaded; 24 steps make `--cpu_conv/--cpu_matmul auto` time
# the kernels (seeded runs then share this machine's stored plan); two threads, as a laptop would run.
STEPS = 24


def _start(model, data, out, *extra) -> subprocess.Popen:
    args = train_args(model, data, out, "--train_batch_size", "16", *extra, steps=STEPS)
    cmd = [sys.executable, "-m", "textinv", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}  # read now: the test's own plan store
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return err


def test_concurrent_runs_a_lone_run_and_a_killed_and_resumed_run_agree_to_the_bit(sd1_model, concept_dir, tmp_path):
    first, second = _start(sd1_model, concept_dir, tmp_path / "a"), _start(sd1_model, concept_dir, tmp_path / "b")
    errs = [_finish(first), _finish(second)]
    # One of the concurrent first runs timed the kernels; the other waited for its plan and reused it.
    assert sum("one step's calls" in e for e in errs) >= 1 and any("stored plan" in e for e in errs), errs
    _finish(_start(sd1_model, concept_dir, tmp_path / "alone"))

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        killed = _start(sd1_model, concept_dir, tmp_path / "killed", "--checkpointing_steps", "8")
        deadline = time.monotonic() + 600
        while not (tmp_path / "killed" / "checkpoint-16").is_dir():
            assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[1][-3000:]
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.communicate()
        _finish(_start(sd1_model, concept_dir, tmp_path / "killed", "--resume_from_checkpoint", "latest"))
    finally:
        busy.kill()
        busy.wait()

    rows = [learned(tmp_path / name)["<cat-toy>"] for name in ("a", "b", "alone", "killed")]
    assert all(torch.equal(rows[0], r) for r in rows[1:]), [float((rows[0] - r).abs().max()) for r in rows[1:]]
