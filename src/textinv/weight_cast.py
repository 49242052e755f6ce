"""Frozen weights cast to bf16/fp16 one tensor at a time, the memory-mapped fp32 pages given back as it goes.

diffusers' `from_pretrained(torch_dtype=...)` casts a component's fp32 weights while its whole safetensors file is
mapped, and every page it read stays resident until the component is loaded: an SD-1.5 bf16 run peaked at 5.5 GB
(the UNet's 3.2 GB of fp32 pages beside its 1.7 GB bf16 copy) and then trained in 2.6. Loaded in the file's own
dtype instead (zero-copy: nothing resident) and cast here tensor by tensor, each fp32 tensor's pages leave the
process (`madvise(MADV_DONTNEED)`; the file is unchanged and they stay in the page cache) as soon as its copy
exists. The cast is `Tensor.to`, as diffusers' own, so the weights are the same bits.
"""

from __future__ import annotations

import ctypes
import mmap

import torch

from textinv.cpu_runtime import glibc_function

_MADV_DONTNEED = 4  # Linux


def _madvise():
    """glibc's `madvise`, typed for addresses (None off glibc: pages are then not given back)."""
    func = glibc_function("madvise")
    if func is not None:
        func.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        func.restype = ctypes.c_int
    return func


def safetensors_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of `.safetensors` files (empty without /proc)."""
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n").endswith(".safetensors"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return ranges


def _file_pages(tensor: torch.Tensor, mappings: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The whole pages of a CPU tensor that lies in a mapped safetensors file, as (start, length); else None."""
    if tensor.device.type != "cpu" or not mappings:
        return None
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    if not any(lo <= start and end <= hi for lo, hi in mappings):
        return None  # anonymous memory: never madvise it (its contents would be lost)
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page
    return (first, last - first) if last > first else None


def cast_frozen_weights(modules, dtype: torch.dtype) -> int:
    """Cast the floating-point parameters and buffers of `modules` to `dtype`, one tensor at a time (PyTorch's
    own `Module._apply`, which `Module.to` uses), giving back each fp32 tensor's file pages once its copy is made.
    Returns the bytes of pages given back."""
    mappings, madvise, dropped = safetensors_mappings(), _madvise(), [0]

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point() or tensor.dtype == dtype:
            return tensor
        pages = _file_pages(tensor, mappings)
        copy = tensor.to(dtype)
        if pages is not None and madvise is not None and madvise(*pages, _MADV_DONTNEED) == 0:
            dropped[0] += pages[1]  # `tensor` is not read again: `_apply` puts `copy` in its place
        return copy

    with torch.no_grad():
        for module in modules:
            module._apply(cast)
    return dropped[0]
