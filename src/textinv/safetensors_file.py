"""Write .safetensors files whose bytes depend only on their tensors and metadata.

Why: the safetensors library writes the header's `__metadata__` in a hash order that changes from process
to process, so two identical runs wrote files that differ byte-wise (and a checksum of a shared embedding
changed with every save). Here the header is re-serialised with its keys sorted; tensors and their
offsets are untouched, so every safetensors reader loads the file exactly as before.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from textinv.atomic import write_atomic

_ALIGN = 8  # safetensors pads the header so that the data starts 8-byte aligned


def canonical(data: bytes) -> bytes:
    """`data` (a whole .safetensors file) with its JSON header's keys in sorted order."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % _ALIGN)
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """`safetensors.torch.save_file`, byte-stable and atomic (temp file + rename)."""
    from safetensors.torch import save

    data = canonical(save(tensors, metadata=metadata or None))
    return write_atomic(path, lambda p: p.write_bytes(data))


def save_arrays(arrays: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.numpy.save_file`, byte-stable and atomic (temp file + rename)."""
    from safetensors.numpy import save

    data = canonical(save(arrays, metadata=metadata or None))
    return write_atomic(path, lambda p: p.write_bytes(data))
