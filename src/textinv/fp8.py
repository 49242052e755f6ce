"""Frozen weights stored in fp8 (`--fp8_base`): the UNet's and text encoder's big matrices at 1 byte each.

Why: textual inversion never updates these weights, only sends gradients *through* them, so they can
be kept in 8 bits and widened to the compute precision one layer at a time. That halves the fp16
UNet (1.72 -> 0.86 GB for SD-1.5), which is most of a GPU step's memory. kohya-ss/sd-scripts calls the
same trade `--fp8_base`; what is learned changes by the rounding of the frozen weights (opt-in).

How: every nn.Linear and nn.Conv2d keeps its weight as float8_e4m3fn with one fp32 scale per output
channel (so small weights are not lost to fp8's narrow range), and its forward goes through an autograd
function that saves the *fp8* weight for the backward and widens it again there. Casting in a plain
forward hook would not do: autograd would keep each widened copy alive until the backward, so the
full-precision weights would all be resident again at the peak. Biases and norms stay as they were.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(FP8).max


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 weight and per-output-channel fp32 scale with weight ≈ w8 * scale."""
    w = weight.detach().float()
    amax = w.flatten(1).abs().amax(dim=1).clamp(min=1e-12)
    scale = (amax / _FP8_MAX).view(-1, *([1] * (w.dim() - 1)))
    return (w / scale).to(FP8), scale


def dequantize(w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (w8.to(torch.float32) * scale).to(dtype)


def _widen_again(w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`dequantize`, bit for bit, for the backward, written as another graph on purpose: under torch.compile
    an identical expression is merged with the forward's and its widened result saved for the backward,
    which brings back the full-precision weights this module exists to drop (tests/test_fp8.py)."""
    return (scale * w8.to(torch.float32)).to(dtype)


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w8, scale, bias):
        ctx.save_for_backward(w8, scale)
        return F.linear(x, dequantize(w8, scale, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        w8, scale = ctx.saved_tensors
        return grad @ _widen_again(w8, scale, grad.dtype), None, None, None


class _Fp8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w8, scale, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(w8, scale)
        ctx.conv = (x.shape, stride, padding, dilation, groups)
        return F.conv2d(x, dequantize(w8, scale, x.dtype), bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        w8, scale = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conv
        weight = _widen_again(w8, scale, grad.dtype)
        grad_x = torch.nn.grad.conv2d_input(shape, weight, grad, stride, padding, dilation, groups)
        return grad_x, None, None, None, None, None, None, None


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _Fp8Linear.apply(x, self.weight_fp8, self.weight_scale, self.bias)


def _conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return _Fp8Conv2d.apply(
        x, self.weight_fp8, self.weight_scale, self.bias, self.stride, self.padding, self.dilation, self.groups
    )


def store_in_fp8(model: nn.Module) -> int:
    """Replace the weight of every frozen nn.Linear / nn.Conv2d in `model` by fp8 + scale; return the count.

    The fp8 tensors are buffers, so `model.to(device)` moves them and the model's dtype (read from its
    first parameter by diffusers and transformers) stays the compute precision.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            forward = _linear_forward
        elif type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            forward = _conv_forward
        else:
            continue
        if module.weight.requires_grad:
            raise ValueError("store_in_fp8 is for frozen weights; this layer's weight requires grad")
        w8, scale = quantize(module.weight)
        del module.weight
        module.register_buffer("weight_fp8", w8)
        module.register_buffer("weight_scale", scale)
        module.forward = forward.__get__(module)
        count += 1
    return count
