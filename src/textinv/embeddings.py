"""Embedding files: every format we read and write (diffusers, concepts library, A1111/ComfyUI, SDXL pairs).

Untrusted files are read with safetensors or `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from textinv.atomic import write_atomic


def save_diffusers_embedding(
    path: str | os.PathLike, token: str, vectors: torch.Tensor, metadata: dict[str, str] | None = None
) -> Path:
    """Write `{token: tensor[num_vectors, dim]}` (diffusers' layout) as .safetensors or weights-only .bin.

    The container follows the suffix; the write is atomic.
    """
    path = Path(path)
    tensor = vectors.detach().to("cpu").contiguous()
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if path.suffix == ".safetensors":
        return write_atomic(path, lambda p: save_file({token: tensor}, str(p), metadata=metadata or None))
    return write_atomic(path, lambda p: torch.save({token: tensor}, p))
