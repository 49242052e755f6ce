"""The CPU runtime set-up: libgomp's threads sleep while they wait, unless the user chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

SNIPPET = "from textinv.cpu_runtime import configure_cpu_runtime; configure_cpu_runtime(); import torch; torch.ones(2)"


def _libgomp_env(**env: str) -> str:
    """What libgomp reports as its settings when loaded (it prints them with OMP_DISPLAY_ENV)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_DYNAMIC", "MKL_DYNAMIC")}
    done = subprocess.run(
        [sys.executable, "-c", SNIPPET], env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stderr + done.stdout


def test_waiting_threads_sleep_and_thread_count_is_not_dynamic():
    shown = _libgomp_env()
    # libgomp shows PASSIVE whenever the policy is not ACTIVE; the spin count tells: 0 here, 300000 unset.
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in shown and "GOMP_SPINCOUNT = '0'" in shown
    assert "OMP_DYNAMIC = 'FALSE'" in shown


def test_the_users_own_wait_policy_wins():
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in _libgomp_env(OMP_WAIT_POLICY="ACTIVE")


def test_called_after_torch_it_keeps_the_thread_count():
    import torch

    from textinv.cpu_runtime import configure_cpu_runtime

    before = torch.get_num_threads()
    assert configure_cpu_runtime() is False
    assert torch.get_num_threads() == before
