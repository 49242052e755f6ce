"""`JaxBackend`: the frozen Flax models on a device mesh, the new rows' AdamW state, and one call per step.

Data parallel as diffusers' Flax script was, with `jax.sharding` instead of `pmap`: a one-axis mesh over every
device (all hosts' after `jax.distributed.initialize`); the global batch is `--train_batch_size` × devices,
split on the batch axis; the frozen parameters, the rows and the optimizer state are replicated, and XLA
inserts the gradient mean across devices.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from textinv.backends.jax import FP16_REFUSAL, payload
from textinv.backends.jax.clip import CLIPTextEncoder
from textinv.backends.jax.step import Frozen, OptimizerConfig, StepFunction, TrainState, init_state, make_optimizer
from textinv.backends.jax.step import learning_rates as diffusers_learning_rates
from textinv.backends.jax.unet import UNet
from textinv.backends.jax.weights import build_text_encoder, build_unet, load_text_encoder, load_unet, read_torch_module
from textinv.errors import TextinvError

WEIGHT_DTYPES = {"no": jnp.float32, "bf16": jnp.bfloat16}
BATCH_AXIS = "batch"


def weight_dtype(mixed_precision: str):
    if mixed_precision not in WEIGHT_DTYPES:
        raise TextinvError(FP16_REFUSAL)
    return WEIGHT_DTYPES[mixed_precision]


def load_models(
    model_dir: Path | None, pipe, mixed_precision: str, variant: str | None = None, gradient_checkpointing: bool = False
):
    """The Flax text encoder and UNet: from the model folder's safetensors, else from the loaded PyTorch pipeline.

    A diffusers folder (or a hub snapshot) is read straight from its files; a single-file checkpoint has no
    component folders, so its already-loaded PyTorch modules are read in memory.
    """
    dtype = weight_dtype(mixed_precision)
    if model_dir is not None and (Path(model_dir) / "unet" / "config.json").is_file():
        folder = Path(model_dir)
        text_encoder = load_text_encoder(folder / "text_encoder", dtype, variant)
        unet = load_unet(folder / "unet", dtype, variant)
    else:
        config = pipe.text_encoder.config.to_dict()
        text_encoder = build_text_encoder(config, read_torch_module(pipe.text_encoder), dtype)
        unet = build_unet(dict(pipe.unet.config), read_torch_module(pipe.unet), dtype)
    unet.gradient_checkpointing = gradient_checkpointing
    return text_encoder, unet


def enable_compilation_cache(environ=os.environ) -> None:
    """Keep XLA's compiled step on disk, so a resumed or repeated run skips the compile (minutes for SD on CPU).

    In `JAX_COMPILATION_CACHE_DIR` when set, else `~/.cache/textinv/jax`. A cached executable computes the same
    bits as a fresh compile of the same program.
    """
    default = Path(environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "textinv" / "jax"
    jax.config.update("jax_compilation_cache_dir", environ.get("JAX_COMPILATION_CACHE_DIR") or str(default))


def set_matmul_precision(allow_tf32: bool) -> str:
    """fp32 matrix products at full fp32 precision unless `--allow_tf32`, as PyTorch's default is.

    XLA on Ampere+ GPUs runs fp32 products in TF32 by default: without this, `--allow_tf32` would be on whether
    given or not (CPUs compute fp32 either way). Returns the precision set.
    """
    precision = "tensorfloat32" if allow_tf32 else "highest"
    jax.config.update("jax_default_matmul_precision", precision)
    return precision


def optimizer_config(cfg, learning_rate: float, total_steps: int) -> OptimizerConfig:
    """AdamW and the LR schedule of a `TrainConfig`, with the LR the shared code scaled (--scale_lr)."""
    return OptimizerConfig(
        learning_rate=learning_rate,
        lr_scheduler=cfg.lr_scheduler,
        lr_warmup_steps=cfg.lr_warmup_steps,
        lr_num_cycles=cfg.lr_num_cycles,
        total_steps=total_steps,
        beta1=cfg.adam_beta1,
        beta2=cfg.adam_beta2,
        weight_decay=cfg.adam_weight_decay,
        epsilon=cfg.adam_epsilon,
    )


class JaxBackend:
    """Trains the placeholder rows with the Flax models; everything else stays with the shared torch code."""

    def __init__(
        self,
        text_encoder: CLIPTextEncoder,
        unet: UNet,
        first_new_id: int,
        optimizer: OptimizerConfig,
        devices: list | None = None,
    ):
        self.mesh = Mesh(np.asarray(devices if devices is not None else jax.devices()), (BATCH_AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(None, BATCH_AXIS))
        dtype = jax.tree.leaves(nnx.state(unet))[0].dtype
        self.learning_rates = diffusers_learning_rates(optimizer)
        self.tx = make_optimizer(optimizer, self.learning_rates)
        self.step_function = StepFunction(text_encoder, unet, first_new_id, self.tx, dtype)
        frozen = Frozen(nnx.state(text_encoder), nnx.state(unet))
        self.frozen = jax.device_put(frozen, self.replicated)

    @property
    def num_devices(self) -> int:
        """Devices in the mesh: the global batch is `--train_batch_size` times this."""
        return self.mesh.devices.size

    @property
    def local_devices(self) -> int:
        """This process's devices in the mesh: it draws `--train_batch_size` times this many samples per micro-step."""
        return sum(d.process_index == jax.process_index() for d in self.mesh.devices.flat)

    def local_slice(self, global_batch: int) -> slice:
        """Which samples of a global micro-batch this process draws and feeds (all of them on one host)."""
        indices = self.batch_sharding.addressable_devices_indices_map((1, global_batch)).values()
        parts = sorted({index[1].indices(global_batch)[:2] for index in indices})
        if any(a[1] != b[0] for a, b in zip(parts, parts[1:], strict=False)):
            raise TextinvError("this host's devices do not hold a contiguous part of the batch; check the launch")
        return slice(parts[0][0], parts[-1][1])

    def init_state(self, rows: np.ndarray) -> TrainState:
        return jax.device_put(init_state(rows, self.tx), self.replicated)

    def train_step(self, state: TrainState, batch: dict[str, np.ndarray]) -> tuple[TrainState, float]:
        """One optimisation step on this process's part of the global batch (`batch.step_batch`); returns the
        new state and the step's loss (mean over micro-batches and all devices). `state` is consumed."""
        sharded = {
            name: jax.make_array_from_process_local_data(self.batch_sharding, array) for name, array in batch.items()
        }
        state, loss = self.step_function.step(state, self.frozen, sharded)
        return state, float(loss)

    def rows(self, state: TrainState) -> np.ndarray:
        return np.asarray(jax.device_get(state.rows))

    def learning_rate(self, step: int) -> float:
        """The LR the optimizer applies at optimisation step `step` (0-based), as diffusers' scheduler gives it."""
        return float(self.learning_rates[min(step, len(self.learning_rates) - 1)])

    def save_state(self, state: TrainState, folder: Path) -> None:
        """Write this backend's part of a checkpoint into `folder` (the caller's atomic temp folder)."""
        payload.save(folder, jax.device_get(state))

    def load_state(self, template: TrainState, folder: Path) -> TrainState:
        """The state saved in checkpoint `folder`, shaped and placed like `template`."""
        return jax.device_put(payload.load(folder, jax.device_get(template)), self.replicated)
