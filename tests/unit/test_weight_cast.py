"""`weight_cast.cast_frozen_weights`: a half-precision CPU run's weights are diffusers' own cast, bit for bit, and the
fp32 pages each tensor was read from leave the process as soon as its copy exists."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from textinv.models import ModelSource, load_pipeline
from textinv.weight_cast import cast_frozen_weights, safetensors_mappings


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


@pytest.mark.parametrize("fixture", ["sd1_model", "sdxl_model"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loading_then_casting_gives_the_weights_diffusers_cast_gives(fixture, dtype, request, monkeypatch):
    model = request.getfixturevalue(fixture)
    source = ModelSource(str(model), "folder")
    theirs = _modules(load_pipeline(source, torch_dtype=dtype))
    ours = _modules(load_pipeline(source, torch_dtype=dtype, on_cpu=True))  # what training and generate load
    assert theirs.keys() == ours.keys()
    for name in theirs:
        want, got = theirs[name].state_dict(), ours[name].state_dict()
        assert want.keys() == got.keys()
        for key in want:
            assert got[key].dtype == want[key].dtype, (name, key)
            assert torch.equal(got[key], want[key]), (name, key)
    assert any(t.dtype == dtype for t in ours["unet"].state_dict().values())
    # ... by the tensor-at-a-time cast, not diffusers' (whose bits it must equal).
    import textinv.weight_cast

    casts = []
    monkeypatch.setattr(textinv.weight_cast, "cast_frozen_weights", lambda modules, to: casts.append(to) or 0)
    assert _modules(load_pipeline(source, torch_dtype=dtype, on_cpu=True))["unet"].dtype == torch.float32
    assert casts == [dtype]


def _resident_kib(path: str) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:
                inside = line.rstrip("\n").endswith(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_the_fp32_pages_leave_the_process_as_each_tensor_is_cast(tmp_path):
    """64 MB of fp32 weights memory-mapped from a safetensors file (as diffusers loads them): cast to bf16, the
    file's pages are no longer resident although the mapping is still held; a tensor in anonymous memory is cast
    and never advised away (its values intact)."""
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.randn(4096, 4096), "bias": torch.randn(4096)}, str(path))
    state = load_file(str(path))  # zero-copy: views of the mapped file
    assert safetensors_mappings()
    layer = torch.nn.Linear(4096, 4096).requires_grad_(False)
    layer.weight = torch.nn.Parameter(state["weight"], requires_grad=False)
    layer.bias = torch.nn.Parameter(state["bias"].clone(), requires_grad=False)  # anonymous memory
    want_weight, want_bias = state["weight"].to(torch.bfloat16), state["bias"].to(torch.bfloat16)
    assert _resident_kib(str(path)) > 60_000  # reading it (the reference cast) made every page resident
    dropped = cast_frozen_weights([layer], torch.bfloat16)
    assert dropped >= 4096 * 4096 * 4 - 8192 and dropped < 4096 * 4096 * 4 + 4096 * 4
    assert _resident_kib(str(path)) < 1_000  # state["weight"] still maps the file: its pages were given back
    assert torch.equal(layer.weight, want_weight) and torch.equal(layer.bias, want_bias)
    assert layer.weight.dtype == layer.bias.dtype == torch.bfloat16
    assert torch.equal(state["weight"].to(torch.bfloat16), want_weight)  # read again from the file: unchanged
