"""Performance options that do not change what is learned: compiling the UNet, a leaner backward, the CPU heap.

Each lever is kept only after `bench/levers.py` or `bench/train_speed.py` measured it; bench/RESULTS.md has the
numbers, including the levers tried and dropped (channels_last, huge pages, pre-packed oneDNN weights). The CPU
kernel choice (`--cpu_conv`, `--cpu_matmul`) lives in `cpu_kernels.py`. What pays most is structural and lives in
the trainer: posteriors cached once, AdamW over the new rows only, no per-step restore, the VAE freed after caching.
"""

from __future__ import annotations

import os
import types
from typing import Any

import torch
import torch.nn.functional as F

from textinv.cpu_runtime import glibc_function

# mallopt() parameter numbers, from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_USERS_MALLOC_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
HEAP_MMAP_THRESHOLD = 4 * 1024**2


# The backward keeps less (`lean_geglu`, and `cpu_kernels.KernelPlan.keep_conv_inputs`) for UNets of this many
# parameters and more. The toy model (2 M) steps in tens of milliseconds; there the routes' Python calls cost
# about 10% of a step and what they free is a few MB.
LEAN_MIN_UNET_PARAMS = 100_000_000


def is_sd_sized(unet: torch.nn.Module) -> bool:
    """Whether a UNet is large enough for the leaner backward to pay (see `LEAN_MIN_UNET_PARAMS`)."""
    return sum(p.numel() for p in unet.parameters()) >= LEAN_MIN_UNET_PARAMS


def apply_speedups(unet, compile_mode: str = "no", lean: bool = True) -> None:
    """`torch.compile` of the UNet's forward when the user asks for it (`--torch_compile MODE`), else, with
    `lean`, leaner GEGLU feed-forwards (`lean_geglu`); a compiled graph plans what its backward keeps by itself.

    Only the forward is wrapped, so the module, its weights and `save_pretrained` are untouched, and
    the input-gradient backward is compiled with it. A step's shapes never change, so it compiles once.
    """
    if compile_mode != "no":
        unet.forward = torch.compile(unet.forward, mode=compile_mode)
    elif lean:
        lean_geglu(unet)


class _GEGLU(torch.autograd.Function):
    """`hidden * gelu(gate)` for `hidden, gate = projected.chunk(2, -1)`, keeping only `projected`.

    Autograd's own ops keep `projected` and `gelu(gate)` as well (half as large again); the backward recomputes
    gelu(gate) instead and runs the same ops autograd would, so the gradients are the same to the bit.
    """

    @staticmethod
    def forward(ctx: Any, projected: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(projected)
        hidden, gate = projected.chunk(2, dim=-1)
        return hidden * F.gelu(gate)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (projected,) = ctx.saved_tensors
        hidden, gate = projected.chunk(2, dim=-1)
        return torch.cat([grad * F.gelu(gate), torch.ops.aten.gelu_backward(grad * hidden, gate)], dim=-1)


def _geglu_forward(self: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return _GEGLU.apply(self.proj(hidden_states))


def lean_geglu(model: torch.nn.Module) -> int:
    """Give diffusers' GEGLU feed-forwards in `model` a backward that keeps less (`_GEGLU`); returns how many.

    The SD-1.5 UNet's sixteen hold 46 MB at 256 px in fp32 that way (0.18 GB at 512 px). Same outputs and
    gradients; not where diffusers takes its NPU or old-MPS paths.
    """
    from diffusers.models.activations import GEGLU
    from diffusers.utils import is_torch_npu_available

    if is_torch_npu_available():
        return 0
    patched = 0
    for module in model.modules():
        if type(module) is GEGLU and next(module.parameters()).device.type != "mps":
            module.forward = types.MethodType(_geglu_forward, module)
            patched += 1
    return patched


def limit_heap_fragmentation() -> bool:
    """On glibc, give every allocation of 4 MiB or more its own mapping, returned to the OS when freed.

    Lowers the peak resident memory of CPU training (see above) without changing any number. Skipped
    off glibc and when the user set the threshold themselves (MALLOC_MMAP_THRESHOLD_, or its GLIBC_TUNABLES
    spelling glibc.malloc.mmap_threshold). Returns whether it was applied.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = glibc_function("mallopt")
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) == 1


def keep_freed_memory() -> bool:
    """On glibc, keep what a step frees on the heap for the next step: no mmap of its own for large blocks, no trim.

    For the JAX backend (the torch path keeps `limit_heap_fragmentation`, a memory lever). XLA's CPU runtime
    allocates a step's temporaries at every call and frees them when it returns; mapped and unmapped each time,
    their gigabytes were faulted in again as fresh zeroed pages every step: 1.5 s of kernel time per SD-1.5 step
    on 2 cores, and a step 4.3 -> 3.2 s without it (bench/RESULTS.md, issue 21). The process keeps its peak,
    which a run reaches at its first step anyway. No number changes. A user's own `MALLOC_*` settings and
    `GLIBC_TUNABLES` malloc tunables win.
    Returns whether it was applied.
    """
    mallopt = glibc_function("mallopt")
    users_own = any(name in os.environ for name in _USERS_MALLOC_SETTINGS)
    if mallopt is None or users_own or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    # -1 as the trim threshold is SIZE_MAX to glibc: the heap top is never given back.
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1


def release_freed_memory() -> bool:
    """On glibc, give the pages of every free heap block back to the OS now (`malloc_trim(0)`); returns whether it ran.

    The partner of `keep_freed_memory` for the JAX backend: once, after loading and after the first step (XLA's
    compile), so that the process keeps what a step reuses and not the peak of the start-up's temporaries (the
    compiler's and the weights' host copies, gigabytes for SD). Blocks in use are not touched; no number changes.
    """
    trim = glibc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True
