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
"""

from __future__ import annotations

import os
import sys

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


def configure_cpu_runtime() -> bool:
    """Set `RUNTIME_ENV` (unless the user set a variable) and fix torch's intra-op thread count.

    Call it before `import torch` for the wait policy to apply (the CLI does, first thing); called later, the
    environment no longer matters for this process and only the thread count is fixed. Returns whether the
    environment was set in time.
    """
    in_time = "torch" not in sys.modules
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
