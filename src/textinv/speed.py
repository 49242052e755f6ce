"""Performance options that do not change what is learned (memory layout, kernels).

Each lever here is measured by `bench/levers.py` or `bench/train_speed.py` before it is kept;
bench/RESULTS.md has the numbers.

- CPU convolution kernels (`--cpu_conv`, kept, default `auto`): oneDNN, PyTorch's default on CPU, is
  slow for some of the UNet's shapes at small latents (a 1280-channel 3x3 convolution on an 8x8 map:
  103 ms forward + input-gradient on oneDNN, 38 ms on PyTorch's native kernels, on a 2-core AMD EPYC),
  while it wins on large maps. Which side wins depends on the CPU and the resolution, so `auto` times
  one real step both ways before training and keeps the faster. Same maths, other summation order.
- glibc's heap on CPU (`limit_heap_fragmentation`, kept, automatic): by default glibc serves blocks up
  to 32 MiB from its heap, where a step's freed activations leave holes that later, larger ones cannot
  reuse. Serving blocks of 4 MiB and more with their own mappings took the SD-1.5 peak from 4.73 to
  4.65 GB at the same speed; 1 MiB saved more (4.58) but cost 9% per step in page faults.
- torch.compile of the UNet (`--torch_compile`, opt-in, for GPUs): 2.37x the reference's steps/s on an
  H200 with 'reduce-overhead'; on CPU 0.94x per step after a 13.6-minute compile.
- channels_last for the UNet: not kept; 0.97x per step on CPU at SD-1.5 size, 256 px, +2.2 GB RSS.

What pays most is structural and lives in the trainer: posteriors cached once, AdamW over the new rows
only, no per-step restore, the VAE freed after caching.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Callable, Iterator

import torch

# `auto` only switches when the native kernels win clearly: both kernels do the same maths, and a
# coin-flip between near-equal timings would make two runs of one command differ in rounding.
NATIVE_MIN_GAIN = 0.10
# Timing costs four steps; a run shorter than this cannot win them back, so `auto` keeps oneDNN there.
AUTO_MIN_STEPS = 20
_M_MMAP_THRESHOLD = -3  # mallopt() parameter number, from glibc's malloc.h
HEAP_MMAP_THRESHOLD = 4 * 1024**2


def apply_speedups(unet, text_encoder, device: torch.device, compile_mode: str = "no") -> None:
    """`torch.compile` of the UNet's forward when the user asks for it (`--torch_compile MODE`).

    Only the forward is wrapped, so the module, its weights and `save_pretrained` are untouched, and
    the input-gradient backward is compiled with it. A step's shapes never change, so it compiles once.
    """
    if compile_mode != "no":
        unet.forward = torch.compile(unet.forward, mode=compile_mode)


@contextlib.contextmanager
def cpu_conv_kernels(kernels: str) -> Iterator[None]:
    """Run what happens inside (forward and backward) on oneDNN's or PyTorch's native CPU convolutions.

    PyTorch picks the convolution backend per call, in the backward too, from one global switch, so the
    switch must cover the `backward()` call as well as the forward. A no-op for anything but "native":
    "onednn", and "" (no choice made, as off CPU).
    """
    if kernels != "native":
        yield
        return
    before = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(before)


def pick_cpu_conv(run_step: Callable[[], None], repeats: int = 2) -> tuple[str, dict[str, float]]:
    """Time `run_step` (one forward + backward of the real first batch) with each kernel set; keep the faster.

    Each set runs `repeats` times, interleaved, and its best time counts, so one-time costs (oneDNN's
    kernel generation, the allocator growing) and a busy moment on the machine do not decide.
    """
    best = {"onednn": float("inf"), "native": float("inf")}
    for _ in range(repeats):
        for kernels in best:
            with cpu_conv_kernels(kernels):
                start = time.perf_counter()
                run_step()
                best[kernels] = min(best[kernels], time.perf_counter() - start)
    choice = "native" if best["native"] < (1 - NATIVE_MIN_GAIN) * best["onednn"] else "onednn"
    return choice, best


def limit_heap_fragmentation() -> bool:
    """On glibc, give every allocation of 4 MiB or more its own mapping, returned to the OS when freed.

    Lowers the peak resident memory of CPU training (see above) without changing any number. Skipped
    off glibc and when the user set MALLOC_MMAP_THRESHOLD_ themselves. Returns whether it was applied.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    return mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) == 1
