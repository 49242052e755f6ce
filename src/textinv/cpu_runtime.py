"""How the CPU thread runtimes are set up: OpenMP threads that sleep while they wait, and a fixed thread count.

PyTorch's x86 wheels bundle GCC's OpenMP (libgomp), which MKL and oneDNN run on too. By default a libgomp
thread that waits at a barrier spins for 300,000 rounds (milliseconds) before it sleeps. Alone on the cores
that is cheap; with another process on them, the thread being waited for is off its core, the spinning one
keeps its own core busy, so the kernel never hands the idle core to the late thread: every op waits a time
slice. `PASSIVE` threads sleep instead (bench/RESULTS.md, "A shared CPU"); how threads wait changes no number.

The thread count does (it decides how reductions are split), so it is fixed: never adapted to the load.
"""

from __future__ import annotations

import os
import sys

# Read by libgomp once, when it is loaded (at `import torch`); a user's own values win.
RUNTIME_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    # Both are the thread-count switches that may follow the load (libgomp's reads the load average); off.
    "OMP_DYNAMIC": "FALSE",
    "MKL_DYNAMIC": "FALSE",
}


def configure_cpu_runtime() -> bool:
    """Set `RUNTIME_ENV` (unless the user set a variable) and fix torch's intra-op thread count.

    Call it before `import torch` for the wait policy to apply (the CLI does, first thing); called later, the
    environment no longer matters for this process and only the thread count is fixed. Returns whether the
    environment was set in time.
    """
    in_time = "torch" not in sys.modules
    for name, value in RUNTIME_ENV.items():
        os.environ.setdefault(name, value)
    if not in_time:
        import torch

        # Same count as before, set explicitly: torch then also turns MKL's dynamic thread count off.
        torch.set_num_threads(torch.get_num_threads())
    return in_time
