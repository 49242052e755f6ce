"""One optimisation step in JAX: forward and backward over the micro-batches, mean, AdamW on the new rows.

What is random about a step (latents, noise, timesteps, templates) is drawn by the shared `SampleStream` and
noised by diffusers' scheduler on the host (`batch.py`), so the two backends see the same numbers; here only
the frozen text encoder and UNet run, the gradient reaches only the new rows, and optax applies AdamW with
diffusers' LR schedule. The whole step is one jitted function; its state buffers are donated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from textinv.backends.jax.clip import CLIPTextEncoder
from textinv.backends.jax.unet import UNet


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its LR schedule, as the flags give them (`learning_rate` already scaled by --scale_lr)."""

    learning_rate: float
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_num_cycles: int = 1
    total_steps: int = 1
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1e-2
    epsilon: float = 1e-8


class TrainState(NamedTuple):
    """What changes from step to step: the new rows [num_vectors, dim] (fp32) and AdamW's state."""

    rows: jax.Array
    opt_state: Any


class Frozen(NamedTuple):
    """The frozen models' parameters (fp32 or bf16); the module structure lives in `StepFunction`."""

    text_encoder: nnx.State
    unet: nnx.State


def learning_rates(cfg: OptimizerConfig) -> np.ndarray:
    """The LR of every step 0..total_steps, from diffusers' `get_scheduler` itself (all its schedules).

    Each schedule is a `LambdaLR`; its LR at step k is the base LR times its lambda at k, read here without
    stepping an optimizer (a stand-in's steps would reach every optimizer hook of the process).
    """
    import torch
    from diffusers.optimization import get_scheduler

    stand_in = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    schedule = get_scheduler(
        cfg.lr_scheduler,
        optimizer=stand_in,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=cfg.total_steps,
        num_cycles=cfg.lr_num_cycles,
    )
    (factor,) = schedule.lr_lambdas
    return np.asarray([cfg.learning_rate * factor(step) for step in range(cfg.total_steps + 1)], dtype=np.float32)


def make_optimizer(cfg: OptimizerConfig, rates: np.ndarray | None = None) -> optax.GradientTransformation:
    """optax AdamW with decoupled weight decay (as torch.optim.AdamW) on the rows, LR per step from diffusers."""
    table = jnp.asarray(learning_rates(cfg) if rates is None else rates)
    # Past the schedule's end (a resumed run's extra step) the last LR holds, as diffusers' lambda gives it.
    schedule = lambda count: table[jnp.minimum(count, table.shape[0] - 1)]  # noqa: E731
    return optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.epsilon, weight_decay=cfg.weight_decay)


class StepFunction:
    """The jitted step `(state, frozen, batch) → (state, loss)` of one model and optimizer.

    `batch` holds one step's micro-batches (leading axis: gradient accumulation), each with `noisy`, `target`
    [B, C, h, w] fp32, `timesteps` [B], `input_ids` [B, T] and the Min-SNR `weights` [B] (ones when off).
    A step whose loss is not finite leaves the state as it was, so the caller still has the last good rows.
    """

    def __init__(self, text_encoder: CLIPTextEncoder, unet: UNet, first_new_id: int, tx, weight_dtype=jnp.float32):
        self.text_graph, _ = nnx.split(text_encoder)
        self.unet_graph, _ = nnx.split(unet)
        self.first_new_id, self.tx, self.weight_dtype = first_new_id, tx, weight_dtype
        self._grad = jax.value_and_grad(self.micro_loss)
        self.step = jax.jit(self._step, donate_argnums=(0,))

    def micro_loss(self, rows: jax.Array, frozen: Frozen, micro: dict) -> jax.Array:
        """The loss of one micro-batch: Min-SNR-weighted mean of the per-sample MSE (plain MSE with unit weights)."""
        text_encoder = nnx.merge(self.text_graph, frozen.text_encoder)
        unet = nnx.merge(self.unet_graph, frozen.unet)
        cond = text_encoder(micro["input_ids"], rows, self.first_new_id).astype(self.weight_dtype)
        pred = unet(micro["noisy"].astype(self.weight_dtype), micro["timesteps"], cond)
        per_sample = jnp.mean(jnp.square(pred.astype(jnp.float32) - micro["target"]), axis=(1, 2, 3))
        return jnp.mean(per_sample * micro["weights"])

    def _step(self, state: TrainState, frozen: Frozen, batch: dict) -> tuple[TrainState, jax.Array]:
        micro_steps = batch["noisy"].shape[0]

        def accumulate(carry, micro):
            loss_sum, grad_sum = carry
            loss, grad = self._grad(state.rows, frozen, micro)
            return (loss_sum + loss / micro_steps, grad_sum + grad / micro_steps), None

        start = (jnp.zeros((), jnp.float32), jnp.zeros_like(state.rows))
        if micro_steps == 1:
            # No loop for one micro-batch: inside XLA's while loop the CPU compiler leaves the UNet's input-gradient
            # convolutions on a slower kernel (bench/RESULTS.md, issue 21); same arithmetic either way.
            (loss, grad), _ = accumulate(start, jax.tree.map(lambda leaf: leaf[0], batch))
        else:
            (loss, grad), _ = jax.lax.scan(accumulate, start, batch)
        updates, opt_state = self.tx.update(grad, state.opt_state, state.rows)
        stepped = TrainState(optax.apply_updates(state.rows, updates), opt_state)
        finite = jnp.isfinite(loss)
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, state)
        return kept, loss


def init_state(rows: np.ndarray, tx: optax.GradientTransformation) -> TrainState:
    rows = jnp.asarray(rows, dtype=jnp.float32)
    return TrainState(rows, tx.init(rows))
