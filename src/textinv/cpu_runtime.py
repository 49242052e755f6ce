"""How the CPU thread runtimes are set up: OpenMP threads that spin only briefly while they wait, and a fixed
thread count.

PyTorch's x86 wheels bundle GCC's OpenMP (libgomp), which MKL and oneDNN run on too. By default a libgomp
thread that waits at a barrier spins for 300,000 rounds (milliseconds) before it sleeps. Alone on the cores
that is cheap; with another process on them, the thread being waited for is off its core while the spinning
one keeps its own core busy: one other training made a run 19x slower. Sleeping at once (`PASSIVE`) fixes
that, but pays a futex wake-up at each of a step's thousands of barriers: an SD-1.5 step alone took 1.3x as
long. Spinning 1,000 rounds (microseconds) first keeps the quick hand-overs between our own threads and
never holds a core for long: as fast as the default alone, as good as `PASSIVE` beside another process
(bench/RESULTS.md, "A shared CPU"). How threads wait changes no number.

The thread count does (it decides how reductions are split), so it is fixed: never adapted to the load.

A JAX training on the CPU also gets one malloc arena for all its threads (`one_malloc_arena`), which must be
set before a second thread allocates, so here too.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence

# Read by libgomp once, when it is loaded (at `import torch`); a user's own values win.
RUNTIME_ENV = {
    # ACTIVE with a spin count: libgomp then spins exactly GOMP_SPINCOUNT rounds, also when threads outnumber cores.
    "OMP_WAIT_POLICY": "ACTIVE",
    "GOMP_SPINCOUNT": "1000",
    # Both are the thread-count switches that may follow the load (libgomp's reads the load average); off.
    "OMP_DYNAMIC": "FALSE",
    "MKL_DYNAMIC": "FALSE",
}


WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def configure_cpu_runtime(argv: Sequence[str] = ()) -> bool:
    """Set `RUNTIME_ENV` (unless the user set a variable) and fix torch's intra-op thread count; for a command
    line `argv` that trains with the JAX backend on the CPU, also `one_malloc_arena`.

    Call it before `import torch` for the wait policy to apply (the CLI does, first thing); called later, the
    environment no longer matters for this process and only the thread count is fixed. Returns whether the
    environment was set in time.
    """
    in_time = "torch" not in sys.modules
    if in_time and trains_with_jax(argv) and jax_steps_on_the_cpu():
        one_malloc_arena()
    # The two wait settings go together: a user's OMP_WAIT_POLICY=PASSIVE must not get our spin count.
    users_wait = any(name in os.environ for name in WAIT_SETTINGS)
    for name, value in RUNTIME_ENV.items():
        if not (users_wait and name in WAIT_SETTINGS):
            os.environ.setdefault(name, value)
    if not in_time:
        import torch

        # Same count as before, set explicitly: torch then also turns MKL's dynamic thread count off.
        torch.set_num_threads(torch.get_num_threads())
    return in_time


def trains_with_jax(argv: Sequence[str]) -> bool:
    """Whether a `textinv` command line trains with `--backend jax`."""
    argv = list(argv)
    return bool(argv) and argv[0] == "train" and ("--backend=jax" in argv or "jax" in _values(argv, "--backend"))


def _values(argv: list[str], flag: str) -> list[str]:
    return [value for name, value in zip(argv, argv[1:], strict=False) if name == flag]


# Packages that give jax an accelerator: with one of them installed, the step runs there, not on XLA's CPU threads.
ACCELERATOR_PLUGINS = ("libtpu", "jax-cuda", "jax-rocm", "jax-metal")


def jax_steps_on_the_cpu(environ=os.environ, installed: Sequence[str] | None = None) -> bool:
    """Whether a JAX training here steps on the CPU: `JAX_PLATFORMS=cpu`, or no accelerator plugin installed.

    Read from the installed packages, not from jax, whose first device query starts the threads that
    `one_malloc_arena` must come before.
    """
    if environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return True
    if installed is None:
        from importlib.metadata import distributions

        installed = [dist.metadata["Name"] or "" for dist in distributions()]
    names = {name.lower().replace("_", "-") for name in installed}
    return not any(name.startswith(ACCELERATOR_PLUGINS) for name in names)


# mallopt() parameter number, from glibc's malloc.h
_M_ARENA_MAX = -8


def glibc_function(name: str):
    """glibc's function `name` (`mallopt`, `malloc_trim`), or None off Linux and under musl and other C libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def one_malloc_arena(environ=os.environ) -> bool:
    """On glibc, make every thread allocate from the main heap (`M_ARENA_MAX` 1); returns whether it was set.

    Why, for the JAX backend: XLA runs a step on its own threads and allocates the step's temporaries there as
    one block (0.78 GB for SD-1.5 at 256 px). A thread's own glibc arena grows in 64 MiB heaps, so a larger block
    is always mapped afresh and unmapped when freed, whatever `speed.keep_freed_memory` says: 195,000 page faults
    and 0.4 s of kernel time every step. From the main heap the block is kept and reused (0 faults a step). Must
    run before a second thread allocates (glibc gives a thread its arena once); a user's own
    `MALLOC_ARENA_MAX` or glibc malloc tunables win. No number changes.
    """
    mallopt = glibc_function("mallopt")
    users_own = "MALLOC_ARENA_MAX" in environ or "glibc.malloc" in environ.get("GLIBC_TUNABLES", "")
    return mallopt is not None and not users_own and mallopt(_M_ARENA_MAX, 1) == 1
