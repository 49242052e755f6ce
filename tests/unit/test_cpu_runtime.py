"""The CPU runtime set-up: libgomp's threads spin only briefly while they wait, unless the user chose otherwise."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from helpers import GLIBC_PROBE_PRELUDE, env_without_malloc_settings

SNIPPET = "from textinv.cpu_runtime import configure_cpu_runtime; configure_cpu_runtime(); import torch; torch.ones(2)"


def _run_showing_libgomp(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter without our runtime variables, libgomp printing its settings when it loads
    (OMP_DISPLAY_ENV)."""
    ours = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DYNAMIC", "MKL_DYNAMIC")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    env = {**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def _libgomp_env(**env: str) -> str:
    """What libgomp reports as its settings when loaded after `configure_cpu_runtime`."""
    done = _run_showing_libgomp(SNIPPET, **env)
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


ARENA_PROBE = (
    GLIBC_PROBE_PRELUDE
    + """
import threading
from textinv.cpu_runtime import configure_cpu_runtime
configure_cpu_runtime(sys.argv[1:])
from textinv import speed

assert speed.keep_freed_memory()
mapped = []

def step():  # what XLA does on its own thread: one large block of temporaries, freed at the end of the step
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(256 << 20)
    mapped.append(libc.mallinfo2().hblkhd - before)
    libc.free(ctypes.c_void_p(block))

for _ in range(2):
    worker = threading.Thread(target=step)
    worker.start()
    worker.join()
print(*mapped)
"""
)


def _mapped_by_a_thread(*argv: str) -> list[int]:
    # JAX_PLATFORMS: a CPU training wherever the suite runs, accelerator plugin installed or not
    env = env_without_malloc_settings(JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", ARENA_PROBE, *argv], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [int(n) for n in done.stdout.split()]


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_a_jax_training_allocates_a_threads_large_blocks_on_the_kept_heap():
    """A thread's 256 MiB block: mapped afresh each time in its own arena (every step's page faults), taken
    from the main heap, and kept there, when the command line trains with the JAX backend."""
    assert _mapped_by_a_thread("train", "--backend", "jax") == [0, 0]
    assert all(n >= 256 << 20 for n in _mapped_by_a_thread("train", "--backend", "torch"))


def test_which_command_lines_train_with_jax():
    from textinv.cpu_runtime import trains_with_jax

    assert trains_with_jax(["train", "--seed", "0", "--backend", "jax"])
    assert trains_with_jax(["train", "--backend=jax"])
    assert not trains_with_jax(["train", "--backend", "torch"])
    assert not trains_with_jax(["train"])
    assert not trains_with_jax(["generate", "--backend", "jax"])
    assert not trains_with_jax([])


UI_WORKER = """
import threading
from textinv.ui.worker import run_training

class Events(list):
    put = list.append

events = Events()
run_training({"train_data_dir": "/nonexistent", "placeholder_token": "<x>", "initializer_token": "star"},
             events, threading.Event())
print(events)
"""


def test_the_ui_worker_sets_the_runtime_up_before_torch_loads():
    """The web UI trains in a fresh worker process, not through the command: it must do what the command does
    first, or its torch would spin libgomp's default 300,000 rounds (a shared CPU's 19x slow-down)."""
    done = _run_showing_libgomp(UI_WORKER)
    assert "error" in done.stdout  # the bad folder, reported as the page shows it
    assert "GOMP_SPINCOUNT = '1000'" in done.stderr + done.stdout


def test_only_a_cpu_jax_training_gets_one_arena():
    """On TPU and GPU hosts the step runs on the accelerator: their many host threads keep their own arenas."""
    from textinv.cpu_runtime import jax_steps_on_the_cpu

    assert jax_steps_on_the_cpu({}, ["jax", "jaxlib", "torch"])
    assert not jax_steps_on_the_cpu({}, ["jax", "jaxlib", "libtpu"])
    assert not jax_steps_on_the_cpu({}, ["jax", "jax_cuda12_plugin", "jax-cuda12-pjrt"])
    assert jax_steps_on_the_cpu({"JAX_PLATFORMS": "cpu"}, ["jax", "libtpu"])
