"""Performance options that do not change what is learned (memory layout, kernels).

Each lever here is measured by `bench/levers.py` or `bench/train_speed.py` before it is kept;
bench/RESULTS.md has the numbers.

- CPU convolution kernels (`--cpu_conv`, kept, default `auto`): oneDNN, PyTorch's default on CPU, is
  slow for some of the UNet's shapes at small latents (a 1280-channel 3x3 convolution on an 8x8 map:
  103 ms forward + input-gradient on oneDNN, 38 ms on PyTorch's native kernels, on a 2-core AMD EPYC),
  while it wins on large maps. Which side wins depends on the CPU and the resolution, so `auto` times
  one real step both ways before training and keeps the faster. Same maths, other summation order.
- CPU matrix products of the frozen linear layers (`--cpu_matmul`, kept, default `auto`): PyTorch's
  x86 wheels run fp32 `nn.Linear` on MKL, which takes its AVX2 code path on AMD CPUs; oneDNN (also in
  the wheel) picks its kernels by instruction set. On a 2-core AMD EPYC (Zen 4) oneDNN's GEMM ran the
  UNet's and text encoder's linear shapes 1.2-1.9x faster, the whole SD-1.5 step about 10% faster.
  `auto` times it like `--cpu_conv`. Same maths, other summation order; input gradients only, so
  only frozen weights take this path.
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
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

# `auto` switches away from PyTorch's defaults only when the other kernels win clearly: both do the same
# maths, and a coin-flip between near-equal timings would make two runs of one command differ in rounding.
# Each lever's gain is 5-15% of an SD-1.5 step on the machines where it wins (native convolutions 9-18%,
# oneDNN's GEMM 6-10% on a 2-core EPYC), so the bar sits below that and above the spread of two timings.
MIN_GAIN = 0.05
# Timing costs four steps per switch; a run shorter than this cannot win them back, so `auto` keeps the defaults.
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
    """Time `run_step` (one forward + backward of the real first batch) with each kernel set; keep the faster."""
    return _pick_faster(run_step, cpu_conv_kernels, ("onednn", "native"), repeats, MIN_GAIN)


def pick_cpu_matmul(run_step: Callable[[], None], repeats: int = 2) -> tuple[str, dict[str, float]]:
    """As `pick_cpu_conv`, for the linear layers' matrix products: PyTorch's BLAS or oneDNN's GEMM."""
    if not onednn_linear_available():
        return "blas", {}
    try:
        return _pick_faster(run_step, cpu_matmul_kernels, ("blas", "onednn"), repeats, MIN_GAIN)
    except (RuntimeError, NotImplementedError) as exc:  # a oneDNN build that cannot run these products
        log.warning("oneDNN matrix products failed on this CPU (%s); using BLAS", str(exc).splitlines()[0])
        return "blas", {}


def _pick_faster(
    run_step, switch, choices: tuple[str, str], repeats: int, min_gain: float
) -> tuple[str, dict[str, float]]:
    """Run `run_step` under `switch(choice)` for both choices, interleaved; the second wins only when faster
    by `min_gain` of the first's time.

    Each choice runs `repeats` times and its best time counts, so one-time costs (kernel generation, the
    allocator growing) and a busy moment on the machine do not decide.
    """
    default, other = choices
    best = {default: float("inf"), other: float("inf")}
    for _ in range(repeats):
        for kernels in best:
            with switch(kernels):
                start = time.perf_counter()
                run_step()
                best[kernels] = min(best[kernels], time.perf_counter() - start)
    choice = other if best[other] < (1 - min_gain) * best[default] else default
    return choice, best


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias) on oneDNN, for x of any leading shape."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
    return out.view(*x.shape[:-1], weight.shape[0])


class _FrozenLinear(torch.autograd.Function):
    """`F.linear` through oneDNN for a frozen weight: the backward gives the input's gradient only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return _onednn_gemm(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return _onednn_gemm(grad, weight.t(), None), None, None


def _takes_onednn_path(x: Any, weight: Any, bias: Any) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        all(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not any(t.requires_grad for t in tensors[1:])  # the backward returns no weight gradient
        and weight.dim() == 2
        and x.dim() >= 1
        and x.shape[-1] == weight.shape[1]
        and x.numel() > 0
    )


class _OneDNNLinearMode(TorchFunctionMode):
    """Sends every eligible `F.linear` call made inside it to `_FrozenLinear`; all else passes through."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            given = {**dict(zip(("input", "weight", "bias"), args, strict=False)), **kwargs}
            x, weight, bias = given.get("input"), given.get("weight"), given.get("bias")
            if _takes_onednn_path(x, weight, bias):
                return _FrozenLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


@contextlib.contextmanager
def cpu_matmul_kernels(kernels: str) -> Iterator[None]:
    """Run the frozen fp32 linear layers called inside on oneDNN's GEMM ("onednn"); a no-op for "blas" and "".

    The backward of a product made inside runs on oneDNN too, wherever `backward()` is called.
    """
    if kernels != "onednn":
        yield
        return
    with _OneDNNLinearMode():
        yield


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
