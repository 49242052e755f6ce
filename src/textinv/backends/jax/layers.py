"""Blocks the Flax text encoder and UNet share: attention, the GEGLU feed-forward, norms, timestep features.

Activations are NHWC (channels last), XLA's native convolution layout on CPU and TPU. Norm statistics are
taken in fp32 whatever the weights' precision, as PyTorch's CPU kernels do for bf16.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from textinv.backends.jax import attention


def linear(din: int, dout: int, rngs: nnx.Rngs, bias: bool = True) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=bias, rngs=rngs)


def conv(din: int, dout: int, kernel: int, rngs: nnx.Rngs, stride: int = 1) -> Conv:
    pad = kernel // 2
    return Conv(din, dout, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)), rngs=rngs)


def patches_product_wins(batch_pixels: int, in_channels: int, kernel: int, platform: str) -> bool:
    """Whether a convolution runs faster on this platform as one matrix product over its image patches.

    XLA's CPU convolution (Eigen's spatial convolution) is slow when the map is small and the channels many:
    on SD's 8x8 and 4x4 maps with 1280 channels its forward + input gradient takes 3-5x the time of the same
    arithmetic as one product of [pixels, k*k*channels] patches by the [k*k*channels, out] kernel, while on
    large maps it wins (bench/jax_conv.py measures both). A 1x1 convolution is a product either way. GPUs and
    TPUs keep their own convolutions.
    """
    if platform != "cpu":
        return False
    return kernel == 1 or batch_pixels <= in_channels


class Conv(nnx.Conv):
    """nnx.Conv (NHWC, HWIO kernel, zero padding) that runs as a patches product where that is faster (above)."""

    def _output_size(self, x: jax.Array) -> tuple[int, int]:
        (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = self.kernel_size, _pair(self.strides), self.padding
        return (x.shape[1] + pt + pb - kh) // sh + 1, (x.shape[2] + pl + pr - kw) // sw + 1

    def takes_patches_product(self, x: jax.Array) -> bool:
        """Whether this input's convolution runs as the patches product on this platform (`patches_product_wins`)."""
        out_h, out_w = self._output_size(x)
        kernel_area = self.kernel_size[0] * self.kernel_size[1]
        return patches_product_wins(x.shape[0] * out_h * out_w, x.shape[-1], kernel_area, jax.default_backend())

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.takes_patches_product(x):
            return self.patches_product(x)
        if jax.default_backend() != "cpu":
            return super().__call__(x)
        out = xla_conv(x, self.kernel[...], _pair(self.strides), tuple(self.padding))
        return out if self.bias is None else out + self.bias[...]

    def patches_product(self, x: jax.Array) -> jax.Array:
        """The convolution as [pixels, kh*kw*C] patches times the [kh*kw*C, out] kernel: one matrix product."""
        (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = self.kernel_size, _pair(self.strides), self.padding
        (b, _, _, c), (out_h, out_w) = x.shape, self._output_size(x)
        padded = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        # Patch features in (row, column, channel) order: the HWIO kernel's, flattened the same way.
        patches = [
            padded[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
            for i in range(kh)
            for j in range(kw)
        ]
        stacked = patches[0] if len(patches) == 1 else jnp.concatenate(patches, axis=-1)
        out = jnp.dot(stacked.reshape(-1, kh * kw * c), self.kernel[...].reshape(kh * kw * c, -1))
        out = out.reshape(b, out_h, out_w, -1)
        return out if self.bias is None else out + self.bias[...]


NHWC = ("NHWC", "HWIO", "NHWC")

# For each output phase (row or column parity) of a 2x nearest upsampling followed by a 3x3 convolution: which of
# the kernel's three taps fall on each of the two source pixels it reads (the one before and the one itself for
# phase 0, the one itself and the one after for phase 1).
_PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


def upsampled_conv_wins(batch_pixels: int, platform: str) -> bool:
    """Whether `upsampled_conv` beats upsampling then convolving, for a source map of `batch_pixels` pixels.

    Its four phase products read 16/9 of the kernel's bytes: with fewer than 128 rows (SD's 4x4 and 8x8 maps at
    256 px) they are bound by that reading and come out no faster (bench/jax_ops.py); from 128 rows on they
    stay bound by arithmetic, of which they do 4/9. GPUs and TPUs keep their own convolutions.
    """
    return platform == "cpu" and batch_pixels >= 128


def upsampled_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """A 3x3 convolution (padding 1) of x upsampled 2x by nearest neighbour, computed on x itself.

    Each output pixel of that convolution reads only 2x2 distinct source pixels: the upsampled copies of one
    source pixel share a weight sum. So the four output phases (row parity x column parity) are four 2x2
    products on the source map, with kernels of summed taps: 16 tap products per source pixel instead of 36,
    and no 4x larger map to build or take the gradient of. The same arithmetic as diffusers' `Upsample2D`
    up to fp32 rounding (the taps are summed before they multiply).
    """
    (b, h, w, c), cout = x.shape, kernel.shape[-1]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = []
    for a, row_taps in enumerate(_PHASE_TAPS):
        cols = []
        for col, col_taps in enumerate(_PHASE_TAPS):
            taps = [sum(kernel[i, j] for i in row_taps[ti] for j in col_taps[tj]) for ti in range(2) for tj in range(2)]
            patches = jnp.concatenate(
                [padded[:, a + ti : a + ti + h, col + tj : col + tj + w, :] for ti in range(2) for tj in range(2)],
                axis=-1,
            )
            cols.append(jnp.dot(patches.reshape(-1, 4 * c), jnp.concatenate(taps, axis=0)).reshape(b, h, w, cout))
        rows.append(jnp.stack(cols, axis=3))  # (b, h, w, column phase, cout)
    out = jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, cout)  # (b, h, row phase, w, column phase, cout)
    return out if bias is None else out + bias


def _lax_conv(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def xla_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple) -> jax.Array:
    """XLA's convolution, with its input gradient written out as a plain forward convolution (CPU).

    Autodiff's input gradient convolves with the flipped kernel read in/out-swapped; inside a loop (gradient
    accumulation's scan) XLA's CPU compiler leaves that one on a kernel about 3x slower than the forward's.
    Materialising the flipped, transposed kernel (behind an optimisation barrier, so it is not folded back)
    makes it an ordinary convolution. Same arithmetic; the kernel gradient is autodiff's.
    """
    return _lax_conv(x, kernel, strides, padding)


def _xla_conv_fwd(x, kernel, strides, padding):
    return _lax_conv(x, kernel, strides, padding), (x, kernel)


def _xla_conv_bwd(strides, padding, residuals, grad):
    x, kernel = residuals
    flipped = jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    pads = []
    dims = zip(x.shape[1:3], grad.shape[1:3], kernel.shape[:2], strides, padding, strict=True)
    for size_in, size_out, k, s, (low, _) in dims:
        before = k - 1 - low  # the gradient, dilated by the stride, padded back out to the input's size
        pads.append((before, size_in + k - 2 - (size_out - 1) * s - before))
    dx = jax.lax.conv_general_dilated(grad, flipped, (1, 1), pads, lhs_dilation=strides, dimension_numbers=NHWC)
    _, kernel_vjp = jax.vjp(lambda k: _lax_conv(x, k, strides, padding), kernel)
    return dx.astype(x.dtype), kernel_vjp(grad)[0]


xla_conv.defvjp(_xla_conv_fwd, _xla_conv_bwd)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm over the last (channel) axis: two-pass variance, fp32 statistics."""

    def __init__(self, groups: int, channels: int, eps: float):
        self.groups, self.eps = groups, eps
        self.scale = nnx.Param(jnp.ones((channels,)))
        self.bias = nnx.Param(jnp.zeros((channels,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        grouped = x.astype(jnp.float32).reshape(shape[0], -1, self.groups, shape[-1] // self.groups)
        mean = grouped.mean(axis=(1, 3), keepdims=True)
        var = jnp.square(grouped - mean).mean(axis=(1, 3), keepdims=True)
        normed = ((grouped - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
        return (normed * self.scale[...] + self.bias[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis: two-pass variance, fp32 statistics."""

    def __init__(self, dim: int, eps: float):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,)))
        self.bias = nnx.Param(jnp.zeros((dim,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (normed * self.scale[...] + self.bias[...]).astype(x.dtype)


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, causal: bool = False) -> jax.Array:
    """Scaled dot-product attention over [B, T, heads * dim] inputs; softmax in fp32 (diffusers' upcast)."""
    b, t, inner = q.shape
    split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, inner // heads)  # noqa: E731
    if not causal and attention.runs_here(jax.default_backend()):
        head_major = lambda x: split(x).transpose(0, 2, 1, 3)  # noqa: E731
        block = attention.query_block(heads, t, k.shape[1])
        out = attention.blockwise_attention(head_major(q), head_major(k), head_major(v), block)
        return out.transpose(0, 2, 1, 3).reshape(b, t, inner)
    out = jax.nn.dot_product_attention(split(q), split(k), split(v), is_causal=causal)
    return out.reshape(b, t, inner)


class Attention(nnx.Module):
    """diffusers' `Attention` as SD's transformer blocks use it: q/k/v without bias, one output projection."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int, rngs: nnx.Rngs):
        inner = heads * head_dim
        self.heads = heads
        self.to_q = linear(query_dim, inner, rngs, bias=False)
        self.to_k = linear(context_dim, inner, rngs, bias=False)
        self.to_v = linear(context_dim, inner, rngs, bias=False)
        self.to_out = linear(inner, query_dim, rngs)

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        out = multi_head_attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


class GEGLUFeedForward(nnx.Module):
    """diffusers' `FeedForward` with `activation_fn="geglu"`: value * gelu(gate), both from one projection."""

    def __init__(self, dim: int, rngs: nnx.Rngs, mult: int = 4):
        inner = dim * mult
        self.proj = linear(dim, inner * 2, rngs)
        self.out = linear(inner, dim, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(self.proj(x), 2, axis=-1)
        return self.out(value * jax.nn.gelu(gate, approximate=False))


def timestep_features(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> jax.Array:
    """Sinusoidal timestep features, as diffusers' `get_timestep_embedding` (max period 10000, fp32)."""
    half = dim // 2
    exponent = -math.log(10000) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb
