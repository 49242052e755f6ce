"""Run a trainer (a script path or `-m module`) and log a time stamp after every optimizer step.

Bench-only. Both trainers are timed the same way without touching their code: PyTorch's global
optimizer-step post hook fires after every `Optimizer.step()` (Accelerate's wrapped optimizer
included), and appends one line per step to the file named by `$TEXTINV_BENCH_STEP_LOG`:

    <perf_counter seconds> <current RSS bytes> <peak CUDA bytes allocated, 0 without CUDA>

(for `textinv train --backend jax` on a GPU, the peak is torch's and jax's allocators' peaks added: the shared
torch code and the Flax step share the device).

Usage: python steptimer.py [--torchvision-shim DIR] SCRIPT.py ARGS...   or   python steptimer.py -m MODULE ARGS...

With `$TEXTINV_BENCH_TURNS` ("GO_FD,DONE_FD", set by `train_speed.py --lockstep`) the trainer takes turns with
the others: after each step it writes a byte to DONE_FD and waits for one on GO_FD, and the time stamps leave the
waiting out, so they read as if the trainer had run alone.

`--torchvision-shim DIR` serves the `torchvision` package in DIR to imports made by SCRIPT's own code
only. Putting DIR on PYTHONPATH instead would make transformers believe torchvision is installed and
import parts of it the shim does not have.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import resource
import runpy
import sys
import time


def _current_rss_bytes() -> int:
    # /proc is cheap to read once per multi-second step and needs no third-party package.
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Turns:
    """The lockstep protocol's child side; a no-op without `$TEXTINV_BENCH_TURNS`."""

    def __init__(self, spec: str | None) -> None:
        self.fds = tuple(int(fd) for fd in spec.split(",")) if spec else None
        self.waited = 0.0

    def clock(self) -> float:
        """perf_counter less the time spent waiting for turns."""
        return time.perf_counter() - self.waited

    def step_done(self) -> None:
        """Hand the CPU back to the bench and sleep until it is this trainer's turn again."""
        if self.fds is None:
            return
        go, done = self.fds
        os.write(done, b".")
        start = time.perf_counter()
        if not os.read(go, 1):
            os._exit(0)  # the bench is gone: nothing is waiting for this run any more
        self.waited += time.perf_counter() - start


TURNS = Turns(os.environ.get("TEXTINV_BENCH_TURNS"))


def install_step_hook(log_path: str) -> None:
    """Append `time rss cuda_peak` to `log_path` after every optimizer step of this process."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    log = open(log_path, "a", buffering=1, encoding="ascii")  # noqa: SIM115 - lives as long as the process

    def after_step(optimizer, args, kwargs) -> None:
        cuda_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        log.write(f"{TURNS.clock():.6f} {_current_rss_bytes()} {cuda_peak}\n")
        TURNS.step_done()

    register_optimizer_step_post_hook(after_step)


def install_jax_step_hook(log_path: str) -> None:
    """The same line after every step of `textinv train --backend jax`, which has no torch optimizer.

    `JaxTrainBackend.update` runs once per step, after the step's loss came back from the device (the step
    has finished), so its time stamps are comparable with the optimizer hook's.
    """
    from textinv.backends.jax.trainer import JaxTrainBackend

    log = open(log_path, "a", buffering=1, encoding="ascii")  # noqa: SIM115 - lives as long as the process
    update = JaxTrainBackend.update

    def update_and_log(self) -> None:
        update(self)
        log.write(f"{TURNS.clock():.6f} {_current_rss_bytes()} {_jax_and_torch_device_peak()}\n")
        TURNS.step_done()

    JaxTrainBackend.update = update_and_log


def _jax_and_torch_device_peak() -> int:
    """Peak bytes allocated on the accelerator by jax (its first local device) and torch; 0 on a CPU."""
    import jax
    import torch

    stats = jax.local_devices()[0].memory_stats() or {}  # None on a CPU
    torch_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return int(stats.get("peak_bytes_in_use", 0)) + torch_peak


class ScriptOnlyFinder(importlib.abc.MetaPathFinder):
    """Finds `torchvision` (from the shim folder) only when the importing code is `script` itself."""

    def __init__(self, shim_dir: str, script: str):
        self.shim_dir = shim_dir
        self.script = os.path.abspath(script)

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] != "torchvision" or not self._imported_by_script():
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.shim_dir] if path is None else path)

    def _imported_by_script(self) -> bool:
        frame = sys._getframe(1)
        while frame is not None and (
            frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith("<frozen importlib")
        ):
            frame = frame.f_back
        if frame is None:
            return False
        filename = os.path.abspath(frame.f_code.co_filename)
        return filename == self.script or filename.startswith(self.shim_dir)


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    if argv[0] == "--torchvision-shim":
        sys.meta_path.insert(0, ScriptOnlyFinder(os.path.abspath(argv[1]), argv[2]))
        argv = argv[2:]
    log_path = os.environ.get("TEXTINV_BENCH_STEP_LOG")
    if not log_path:
        raise SystemExit("steptimer: set TEXTINV_BENCH_STEP_LOG to the step-log file")
    runs_jax = False
    if argv[:2] == ["-m", "textinv"]:
        # `textinv` sets its OpenMP runtime up before torch loads (libgomp reads it once); the hook below
        # imports torch first, so do here what the command does first.
        from textinv.cpu_runtime import configure_cpu_runtime, trains_with_jax

        configure_cpu_runtime(argv[2:])
        runs_jax = trains_with_jax(argv[2:])
    install_step_hook(log_path)
    if runs_jax:
        install_jax_step_hook(log_path)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    finally:
        # ru_maxrss (KiB on Linux) of this process: the parent also reads it via wait4.
        sys.stderr.write(f"steptimer: ru_maxrss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\n")
