"""transformers' `CLIPTextModel` as Stable Diffusion uses it, in Flax NNX: the last hidden state after the final norm.

SD 2.x needs nothing else: its text encoder's config already stops at the penultimate layer
(`num_hidden_layers` 23 of OpenCLIP's 24). The token lookup takes the trainable placeholder rows apart
from the frozen table, so the gradient reaches only them and the table is never resized or copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from textinv.backends.jax.layers import LayerNorm, linear, multi_head_attention
from textinv.errors import TextinvError

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    hidden_act: str
    layer_norm_eps: float

    @classmethod
    def from_dict(cls, config: dict) -> CLIPTextConfig:
        act = config.get("hidden_act", "quick_gelu")
        if act not in ACTIVATIONS:
            raise TextinvError(
                f"the text encoder uses hidden_act {act!r}; the JAX backend knows {', '.join(ACTIVATIONS)}; "
                "use --backend torch"
            )
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=config["num_attention_heads"],
            max_position_embeddings=config["max_position_embeddings"],
            hidden_act=act,
            layer_norm_eps=config.get("layer_norm_eps", 1e-5),
        )


class CLIPAttention(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, rngs: nnx.Rngs):
        dim = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj = linear(dim, dim, rngs)
        self.k_proj = linear(dim, dim, rngs)
        self.v_proj = linear(dim, dim, rngs)
        self.out_proj = linear(dim, dim, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = multi_head_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, causal=True)
        return self.out_proj(out)


class CLIPMLP(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = linear(cfg.hidden_size, cfg.intermediate_size, rngs)
        self.fc2 = linear(cfg.intermediate_size, cfg.hidden_size, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, rngs: nnx.Rngs):
        self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg, rngs)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, rngs: nnx.Rngs):
        self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.position_embedding = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs)

    def __call__(self, input_ids: jax.Array, new_rows: jax.Array | None, first_new_id: int) -> jax.Array:
        table = self.token_embedding.embedding[...]
        if new_rows is None:
            tokens = jnp.take(table, input_ids, axis=0)
        else:
            # The new ids lie past the frozen table's end: look up row 0 for them, then put the rows in.
            offset = input_ids - first_new_id
            is_new = (offset >= 0) & (offset < new_rows.shape[0])
            frozen = jnp.take(table, jnp.where(is_new, 0, input_ids), axis=0)
            new = jnp.take(new_rows.astype(table.dtype), jnp.clip(offset, 0, new_rows.shape[0] - 1), axis=0)
            tokens = jnp.where(is_new[..., None], new, frozen)
        positions = self.position_embedding.embedding[: input_ids.shape[1]]
        return tokens + positions[None]


class CLIPTextEncoder(nnx.Module):
    """Token ids [B, T] → last hidden state [B, T, hidden] (after `final_layer_norm`), as `CLIPTextModel(ids)[0]`."""

    def __init__(self, cfg: CLIPTextConfig, rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = CLIPEmbeddings(cfg, rngs)
        self.layers = nnx.List([CLIPEncoderLayer(cfg, rngs) for _ in range(cfg.num_hidden_layers)])
        self.final_layer_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def __call__(self, input_ids: jax.Array, new_rows: jax.Array | None = None, first_new_id: int = 0) -> jax.Array:
        x = self.embeddings(input_ids, new_rows, first_new_id)
        for layer in self.layers:
            x = layer(x)
        return self.final_layer_norm(x)
