"""`--fp8_base`: frozen linear/conv weights stored in fp8, widened per layer, never resident widened."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from textinv.fp8 import FP8, dequantize, quantize, store_in_fp8


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 16, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 8),
    ).requires_grad_(False)


def test_quantize_keeps_small_channels_and_rounds_to_fp8_precision():
    """One scale per output channel: a channel of tiny weights is as precise as one of large weights."""
    w = torch.randn(4, 64)
    w[1] *= 1e-4  # would be flushed to zero by a plain cast to e4m3 (smallest subnormal ~2e-3)
    w8, scale = quantize(w)
    assert w8.dtype == FP8
    err = (dequantize(w8, scale, torch.float32) - w).abs() / w.abs().amax(1, keepdim=True)
    assert err.max() < 2**-4  # 3 mantissa bits: half an ulp at the channel's largest magnitude, at worst


def test_fp8_layers_compute_with_the_rounded_weights_forward_and_backward():
    stored, rounded = _model(), _model()
    with torch.no_grad():
        for m in rounded.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(dequantize(*quantize(m.weight), torch.float32))
    assert store_in_fp8(stored) == 3
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = stored(x)
    out.square().sum().backward()
    grad, x.grad = x.grad.clone(), None
    expected = rounded(x)
    expected.square().sum().backward()
    assert torch.equal(out, expected)
    assert torch.allclose(grad, x.grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("compiled", [False, True])
def test_fp8_model_keeps_its_dtype_and_saves_no_widened_weight_for_backward(compiled):
    """What autograd keeps for the backward is the 1-byte weights, not full-precision copies of them,
    also under torch.compile (`--torch_compile`), whose graph partitioner picks what to save itself."""
    model = _model()
    full = copy.deepcopy(model)
    store_in_fp8(model)
    assert next(model.parameters()).dtype == torch.float32  # the biases: the model's dtype is unchanged
    assert not any(n.endswith(".weight") for n, _ in model.named_parameters())
    assert {b.dtype for n, b in model.named_buffers() if n.endswith("weight_fp8")} == {FP8}

    def saved_by(net: nn.Module) -> list[torch.Tensor]:
        saved = []

        def pack(t):
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(torch.randn(2, 4, 8, 8, requires_grad=True)).sum()
        return saved

    weight_shapes = {tuple(m.weight.shape) for m in full.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    run = torch.compile(model, backend="aot_eager") if compiled else model
    widened = [t for t in saved_by(run) if tuple(t.shape) in weight_shapes and t.dtype != FP8]
    assert widened == []
    assert any(tuple(t.shape) in weight_shapes for t in saved_by(full))  # the check can see a weight
