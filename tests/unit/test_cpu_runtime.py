"""The CPU runtime set-up: libgomp's threads spin only briefly while they wait, unless the user chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

SNIPPET = "from textinv.cpu_runtime import configure_cpu_runtime; configure_cpu_runtime(); import torch; torch.ones(2)"


def _libgomp_env(**env: str) -> str:
    """What libgomp reports as its settings when loaded (it prints them with OMP_DISPLAY_ENV)."""
    ours = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DYNAMIC", "MKL_DYNAMIC")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    env = {**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env}
    done = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stderr + done.stdout


def test_waiting_threads_spin_briefly_and_thread_count_is_not_dynamic():
    shown = _libgomp_env()
    assert "GOMP_SPINCOUNT = '1000'" in shown  # libgomp's own default: 300000 rounds
    assert "OMP_DYNAMIC = 'FALSE'" in shown


def test_the_users_own_wait_policy_wins():
    shown = _libgomp_env(OMP_WAIT_POLICY="PASSIVE")
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in shown and "GOMP_SPINCOUNT = '0'" in shown


def test_called_after_torch_it_keeps_the_thread_count():
    import torch

    from textinv.cpu_runtime import configure_cpu_runtime

    before = torch.get_num_threads()
    assert configure_cpu_runtime() is False
    assert torch.get_num_threads() == before
