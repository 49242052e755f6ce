"""Byte-stable .safetensors writing: same tensors and metadata, same bytes, in any process."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from textinv.safetensors_file import canonical, save_arrays, save_tensors

META = {"textinv.token": "<t>", "zz": "1", "aa": "2", "textinv.base_model": "m", "format": "pt"}

_WRITE = f"""
import sys, torch
from textinv.safetensors_file import save_tensors
save_tensors({{"b": torch.arange(3.0), "a": torch.ones(2, 4)}}, sys.argv[1], {META!r})
"""


def test_files_written_by_separate_processes_are_identical(tmp_path):
    digests = set()
    for i in range(3):  # the library's own header order changes from process to process
        out = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", _WRITE, str(out)], check=True)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_canonical_header_is_sorted_aligned_and_loads_the_same(tmp_path):
    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, 4, dtype=torch.float16)}
    data = canonical(save(tensors, metadata=META))
    (length,) = struct.unpack("<Q", data[:8])
    assert (8 + length) % 8 == 0
    header = json.loads(data[8 : 8 + length])
    assert list(header["__metadata__"]) == sorted(META)
    path = save_tensors(tensors, tmp_path / "x.safetensors", META)
    assert path.read_bytes() == data
    loaded = load_file(str(path))
    assert torch.equal(loaded["b"], tensors["b"]) and torch.equal(loaded["a"], tensors["a"])
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == META


def test_numpy_arrays_too(tmp_path):
    from safetensors.numpy import load_file as load_numpy

    path = save_arrays({"x": np.arange(5, dtype=np.float32)}, tmp_path / "s.safetensors", {"backend": "jax", "f": "1"})
    assert np.array_equal(load_numpy(str(path))["x"], np.arange(5, dtype=np.float32))
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, nothing left behind
