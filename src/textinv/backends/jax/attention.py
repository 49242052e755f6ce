"""The UNet's attention on a CPU: softmax attention with a hand-written backward, over blocks of queries when large.

On a CPU `jax.nn.dot_product_attention` and its autodiff backward take up to twice the time of this module's at
the sizes SD's UNet runs (SD-1.5 at 256 px, forward + gradient: 1,024-token self-attention 144 vs 73 ms, 256-token
12.4 vs 7.9 ms, 256 queries over 77 text tokens 3.6 vs 2.4 ms; at 64 tokens and fewer, within 15 % either way:
`bench/jax_ops.py`, issue 21): its softmax passes and their gradients run at memory speed over the whole [heads,
queries, keys] score matrix. Here, when that matrix is large (SD's 32x32 level,
1,024 tokens, 32 MB), the queries go in blocks whose scores stay in cache, and the backward recomputes each block's
probabilities from the saved log-sum-exp (as flash attention does), so that at 512 px (4,096 tokens) no 512 MB
score matrix per layer is kept. (Keeping the forward's exponentials for the backward where they are small was
measured too: faster for one layer alone, slower in the whole step.) Each elementwise pass over a block of scores
costs about what its matrix products do, so there are as few as the maths allows: the queries are scaled instead
of the scores, and the softmax is normalised after the product with v.

Scores, softmax and accumulation are fp32 whatever the inputs' precision (diffusers' upcast). Exact softmax, not an
approximation: within float rounding of jax's attention. GPUs and TPUs keep jax's own (cuDNN, XLA's fusions).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

SCORE_BLOCK_ELEMENTS = 2 << 20  # 8 MB of fp32 scores per block of queries
LARGE_SCORES = 4 << 20  # blocks pay off from 16 MB of scores (SD's 32x32 level at 256 px); smaller maps run whole


def runs_here(platform: str) -> bool:
    """Whether non-causal attention runs as this module's `blockwise_attention`: on a CPU (above)."""
    return platform == "cpu"


def query_block(heads: int, queries: int, keys: int) -> int:
    """Queries per block: all of them while the scores stay under 16 MB, else 8 MB of scores a block."""
    if heads * queries * keys < LARGE_SCORES:
        return queries
    return max(16, SCORE_BLOCK_ELEMENTS // (heads * keys))


def _blocks(length: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, length)) for start in range(0, length, block)]


def _scaled(q: jax.Array) -> jax.Array:
    """q / √d: scaling the queries, not the scores, spares a pass over every block of scores.

    In fp32, not q's dtype: 1/√d in bf16 would be off by up to 0.4 %, the same way for every score.
    """
    return (q.astype(jnp.float32) / math.sqrt(q.shape[-1])).astype(q.dtype)


def _scores(scaled_q: jax.Array, k: jax.Array) -> jax.Array:
    return jnp.einsum("bhqd,bhkd->bhqk", scaled_q, k, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, block: int) -> jax.Array:
    """softmax(q kᵀ / √d) v for q [B, H, Tq, D], k and v [B, H, Tk, D], `block` queries at a time."""
    return _forward(q, k, v, block)[0]


def _forward(q, k, v, block):
    scaled_q = _scaled(q)
    outputs, log_sum_exps = [], []
    for start, end in _blocks(q.shape[2], block):
        scores = _scores(scaled_q[:, :, start:end], k)
        peak = jnp.max(scores, axis=-1, keepdims=True)
        weights = jnp.exp(scores - peak)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        # Normalised after the product: one division per output value, not per score (a pass less over the block).
        unnormalised = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
        outputs.append((unnormalised / total).astype(q.dtype))
        log_sum_exps.append(peak + jnp.log(total))
    out = jnp.concatenate(outputs, axis=2)
    return out, (scaled_q, k, v, out, jnp.concatenate(log_sum_exps, axis=2))


def _backward(block, residuals, grad_out):
    scaled_q, k, v, out, log_sum_exp = residuals
    # Σ_k p·dp for each query: the softmax gradient's subtracted term, from the output instead of the probabilities.
    delta = jnp.sum(grad_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    grad_k, grad_v = jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
    grad_q = []
    for start, end in _blocks(scaled_q.shape[2], block):
        q_block, grad_block = scaled_q[:, :, start:end], grad_out[:, :, start:end]
        probs = jnp.exp(_scores(q_block, k) - log_sum_exp[:, :, start:end])
        grad_v += jnp.einsum("bhqk,bhqd->bhkd", probs.astype(v.dtype), grad_block, preferred_element_type=jnp.float32)
        grad_probs = jnp.einsum("bhqd,bhkd->bhqk", grad_block, v, preferred_element_type=jnp.float32)
        grad_scores = (probs * (grad_probs - delta[:, :, start:end])).astype(k.dtype)  # d loss / d (scaled q · k)
        grad_q.append(jnp.einsum("bhqk,bhkd->bhqd", grad_scores, k, preferred_element_type=jnp.float32))
        grad_k += jnp.einsum("bhqk,bhqd->bhkd", grad_scores, q_block, preferred_element_type=jnp.float32)
    grad_q = _scaled(jnp.concatenate(grad_q, axis=2))  # through q / √d
    return grad_q.astype(scaled_q.dtype), grad_k.astype(k.dtype), grad_v.astype(v.dtype)


blockwise_attention.defvjp(_forward, _backward)
