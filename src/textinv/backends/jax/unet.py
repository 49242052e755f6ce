"""diffusers' `UNet2DConditionModel` for SD 1.x and 2.x configs, in Flax NNX, NHWC inside.

Attribute names follow diffusers' module names, so a state-dict key names its parameter here
(`weights.py` maps the few that differ). Configs this module cannot run exactly (SDXL's added
embeddings, other block types) are refused with a one-line error rather than run approximately.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from textinv.backends.jax import layers
from textinv.backends.jax.layers import Attention, GEGLUFeedForward, GroupNorm, LayerNorm, conv, linear
from textinv.backends.jax.layers import timestep_features as sinusoidal
from textinv.errors import TextinvError

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
# Config keys whose non-default value would change the forward pass in ways this module does not implement.
MUST_BE = {
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "class_embed_type": (None,),
    "addition_embed_type": (None,),
    "encoder_hid_dim": (None,),
    "time_embedding_type": ("positional",),
    "time_cond_proj_dim": (None,),
    "timestep_post_act": (None,),
    "resnet_time_scale_shift": ("default",),
    "act_fn": ("silu",),
    "center_input_sample": (False,),
    "only_cross_attention": (False,),
    "dual_cross_attention": (False,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "downsample_padding": (1,),
    "mid_block_scale_factor": (1, 1.0),
    "resnet_out_scale_factor": (1, 1.0),
    "reverse_transformer_layers_per_block": (None,),
    "num_class_embeds": (None,),
}


def _per_block(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: tuple[int, ...]
    transformer_layers: tuple[int, ...]
    heads: tuple[int, ...]
    cross_attention_dim: tuple[int, ...]
    use_linear_projection: bool
    norm_num_groups: int
    norm_eps: float
    flip_sin_to_cos: bool
    freq_shift: float

    @classmethod
    def from_dict(cls, config: dict) -> UNetConfig:
        for key, allowed in MUST_BE.items():
            if config.get(key, allowed[0]) not in allowed:
                raise TextinvError(
                    f"the UNet's config has {key}={config[key]!r}; the JAX backend runs SD 1.x/2.x UNets only; "
                    "use --backend torch"
                )
        down, up = tuple(config["down_block_types"]), tuple(config["up_block_types"])
        if set(down) - {CROSS_DOWN, PLAIN_DOWN} or set(up) - {CROSS_UP, PLAIN_UP}:
            raise TextinvError(
                f"the UNet has blocks {sorted(set(down + up))}; the JAX backend knows {CROSS_DOWN}, {PLAIN_DOWN}, "
                f"{CROSS_UP}, {PLAIN_UP}; use --backend torch"
            )
        n = len(down)
        # diffusers' historical naming: `attention_head_dim` means the number of heads unless
        # `num_attention_heads` is given.
        heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
        return cls(
            in_channels=config.get("in_channels", 4),
            out_channels=config.get("out_channels", 4),
            block_out_channels=tuple(config["block_out_channels"]),
            down_block_types=down,
            up_block_types=up,
            layers_per_block=_per_block(config.get("layers_per_block", 2), n),
            transformer_layers=_per_block(config.get("transformer_layers_per_block", 1), n),
            heads=_per_block(heads, n),
            cross_attention_dim=_per_block(config.get("cross_attention_dim", 1280), n),
            use_linear_projection=bool(config.get("use_linear_projection", False)),
            norm_num_groups=config.get("norm_num_groups", 32),
            norm_eps=config.get("norm_eps", 1e-5),
            flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
            freq_shift=config.get("freq_shift", 0),
        )


class ResnetBlock(nnx.Module):
    def __init__(self, din: int, dout: int, temb: int, groups: int, eps: float, rngs: nnx.Rngs):
        self.norm1 = GroupNorm(groups, din, eps)
        self.conv1 = conv(din, dout, 3, rngs)
        self.time_emb_proj = linear(temb, dout, rngs)
        self.norm2 = GroupNorm(groups, dout, eps)
        self.conv2 = conv(dout, dout, 3, rngs)
        self.conv_shortcut = conv(din, dout, 1, rngs) if din != dout else None

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class TransformerBlock(nnx.Module):
    """diffusers' `BasicTransformerBlock`: self-attention, cross-attention, GEGLU, each pre-LayerNorm."""

    def __init__(self, dim: int, context_dim: int, heads: int, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(dim, 1e-5)
        self.attn1 = Attention(dim, dim, heads, dim // heads, rngs)
        self.norm2 = LayerNorm(dim, 1e-5)
        self.attn2 = Attention(dim, context_dim, heads, dim // heads, rngs)
        self.norm3 = LayerNorm(dim, 1e-5)
        self.ff = GEGLUFeedForward(dim, rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nnx.Module):
    """diffusers' `Transformer2DModel` over an image: GroupNorm, projection in (1x1 conv or linear), blocks, out."""

    def __init__(self, cfg: UNetConfig, dim: int, heads: int, depth: int, context_dim: int, rngs: nnx.Rngs):
        self.linear = cfg.use_linear_projection
        self.norm = GroupNorm(cfg.norm_num_groups, dim, 1e-6)
        self.proj_in = linear(dim, dim, rngs) if self.linear else conv(dim, dim, 1, rngs)
        self.transformer_blocks = nnx.List([TransformerBlock(dim, context_dim, heads, rngs) for _ in range(depth)])
        self.proj_out = linear(dim, dim, rngs) if self.linear else conv(dim, dim, 1, rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        hidden = self.norm(x)
        # A 1x1 convolution and a linear layer on the flattened pixels are the same map; the weights' layout differs.
        hidden = self.proj_in(hidden).reshape(b, h * w, c)
        for block in self.transformer_blocks:
            hidden = block(hidden, context)
        return self.proj_out(hidden.reshape(b, h, w, c)) + x


def _upsample_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """torch's `interpolate(mode="nearest")` to `size`: source index floor(i * in / out)."""
    if size == (x.shape[1] * 2, x.shape[2] * 2):
        # The usual case as a repeat: its gradient is a sum, where a gather's would be a scatter.
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = (jnp.arange(size[0]) * x.shape[1]) // size[0]
    cols = (jnp.arange(size[1]) * x.shape[2]) // size[1]
    return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


class Sampler(nnx.Module):
    """`Downsample2D` (3x3 conv, stride 2) or `Upsample2D` (nearest resize, then 3x3 conv); `conv` as in diffusers."""

    def __init__(self, dim: int, down: bool, rngs: nnx.Rngs):
        self.down = down
        self.conv = conv(dim, dim, 3, rngs, stride=2 if down else 1)

    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        if not self.down:
            (batch, h, w, _), size = x.shape, size or (x.shape[1] * 2, x.shape[2] * 2)
            if size == (2 * h, 2 * w) and layers.upsampled_conv_wins(batch * h * w, jax.default_backend()):
                bias = None if self.conv.bias is None else self.conv.bias[...]
                return layers.upsampled_conv(x, self.conv.kernel[...], bias)
            x = _upsample_nearest(x, size)
        return self.conv(x)


class UNetBlock(nnx.Module):
    """One down or up block: resnets, each followed by a Transformer2D in the cross-attention kinds, then a sampler."""

    def __init__(
        self, resnet_dims: list[tuple[int, int]], attention: dict | None, sampler: bool | None, t: int, cfg, rngs
    ):
        groups, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nnx.List([ResnetBlock(din, dout, t, groups, eps, rngs) for din, dout in resnet_dims])
        dim = resnet_dims[-1][1]
        kinds = [] if attention is None else resnet_dims
        self.attentions = nnx.List([Transformer2D(cfg, dim, rngs=rngs, **attention) for _ in kinds])
        self.sampler = None if sampler is None else Sampler(dim, down=sampler, rngs=rngs)

    def down(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.sampler is not None:
            x = self.sampler(x)
            skips.append(x)
        return x, skips

    def up(self, x, temb, context, skips: list[jax.Array], size: tuple[int, int] | None) -> jax.Array:
        for i, resnet in enumerate(self.resnets):
            x = resnet(jnp.concatenate([x, skips.pop()], axis=-1), temb)
            if self.attentions:
                x = self.attentions[i](x, context)
        return x if self.sampler is None else self.sampler(x, size)


class MidBlock(nnx.Module):
    def __init__(self, cfg: UNetConfig, t: int, rngs: nnx.Rngs):
        dim, groups, eps = cfg.block_out_channels[-1], cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nnx.List([ResnetBlock(dim, dim, t, groups, eps, rngs) for _ in range(2)])
        attention = Transformer2D(
            cfg, dim, cfg.heads[-1], cfg.transformer_layers[-1], cfg.cross_attention_dim[-1], rngs
        )
        self.attentions = nnx.List([attention])

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class TimestepEmbedding(nnx.Module):
    def __init__(self, din: int, dout: int, rngs: nnx.Rngs):
        self.linear_1 = linear(din, dout, rngs)
        self.linear_2 = linear(dout, dout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class UNet(nnx.Module):
    """(noisy latents [B, C, H, W] NCHW, timesteps [B], text states [B, T, D]) → prediction [B, C, H, W]."""

    def __init__(self, cfg: UNetConfig, rngs: nnx.Rngs):
        self.config = cfg
        # --gradient_checkpointing: each block's activations are recomputed in the backward instead of kept.
        self.gradient_checkpointing = False
        chans, t = cfg.block_out_channels, cfg.block_out_channels[0] * 4
        self.conv_in = conv(cfg.in_channels, chans[0], 3, rngs)
        self.time_embedding = TimestepEmbedding(chans[0], t, rngs)
        self.down_blocks = nnx.List()
        for i, kind in enumerate(cfg.down_block_types):
            din, dout, n = chans[max(i - 1, 0)], chans[i], cfg.layers_per_block[i]
            dims = [(din if j == 0 else dout, dout) for j in range(n)]
            last = i == len(chans) - 1
            attention = self._attention(i) if kind == CROSS_DOWN else None
            self.down_blocks.append(UNetBlock(dims, attention, None if last else True, t, cfg, rngs))
        self.mid_block = MidBlock(cfg, t, rngs)
        self.up_blocks = nnx.List()
        rev = list(reversed(chans))
        for i, kind in enumerate(cfg.up_block_types):
            prev, dout, din = rev[max(i - 1, 0)], rev[i], rev[min(i + 1, len(rev) - 1)]
            n = list(reversed(cfg.layers_per_block))[i] + 1
            dims = [((prev if j == 0 else dout) + (din if j == n - 1 else dout), dout) for j in range(n)]
            last = i == len(rev) - 1
            attention = self._attention(len(rev) - 1 - i) if kind == CROSS_UP else None
            self.up_blocks.append(UNetBlock(dims, attention, None if last else False, t, cfg, rngs))
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, chans[0], cfg.norm_eps)
        self.conv_out = conv(chans[0], cfg.out_channels, 3, rngs)

    def _maybe_remat(self, fn):
        """`fn(block, *arrays)`, under `jax.checkpoint` with --gradient_checkpointing.

        The block goes in as its parameters (a pure function of arrays) rather than through `nnx.remat`, which
        would write the parameters back and fails when they belong to the caller's trace.
        """
        if not self.gradient_checkpointing:
            return fn

        def rematerialised(block, *args):
            graphdef, state = nnx.split(block)
            return jax.checkpoint(lambda state, *args: fn(nnx.merge(graphdef, state), *args))(state, *args)

        return rematerialised

    def _attention(self, level: int) -> dict:
        cfg = self.config
        return {
            "heads": cfg.heads[level],
            "depth": cfg.transformer_layers[level],
            "context_dim": cfg.cross_attention_dim[level],
        }

    def __call__(self, sample: jax.Array, timesteps: jax.Array, context: jax.Array) -> jax.Array:
        cfg = self.config
        x = jnp.transpose(sample, (0, 2, 3, 1))
        timesteps = jnp.broadcast_to(timesteps, (x.shape[0],))
        features = sinusoidal(timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = self.time_embedding(features.astype(x.dtype))
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, more = self._maybe_remat(UNetBlock.down)(block, x, temb, context)
            skips += more
        x = self._maybe_remat(MidBlock.__call__)(self.mid_block, x, temb, context)
        for block in self.up_blocks:
            mine = skips[-len(block.resnets) :]
            del skips[-len(block.resnets) :]
            # The upsampler matches the next skip's size, so odd latent sizes come back as they went down.
            size = tuple(skips[-1].shape[1:3]) if skips else None
            up = lambda block, x, temb, context, mine, size=size: block.up(x, temb, context, mine, size)  # noqa: E731
            x = self._maybe_remat(up)(block, x, temb, context, mine)
        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        return jnp.transpose(x, (0, 3, 1, 2))
