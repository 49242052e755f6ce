"""`JaxTrainBackend`: the JAX backend behind train.py's backend seam (the interface of `pytorch.TorchBackend`).

train.py keeps the run: model and token set-up, data, the sample stream, checkpoints' bookkeeping, outputs and
validation, all on the family adapter's torch rows. This class runs each step on the Flax models and copies
the updated rows back into those torch rows, so everything that reads them (checkpoints, step embeddings,
validation images, the final files) sees the JAX backend's learning.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import torch

from textinv import cpu_kernels
from textinv.backends.jax.backend import (
    JaxBackend,
    enable_compilation_cache,
    load_models,
    optimizer_config,
    set_matmul_precision,
)
from textinv.backends.jax.batch import step_batch
from textinv.data import LatentPosteriors, SampleDraws
from textinv.errors import TextinvError
from textinv.families.base import FamilyAdapter
from textinv.speed import keep_freed_memory, release_freed_memory


def data_parallel_size() -> int:
    """Devices the global batch is split over (every host's): `--train_batch_size` times this per micro-step."""
    return jax.device_count()


class JaxTrainBackend:
    name = "jax"
    replica_unit = "device(s)"  # what one copy of the batch runs on, for the start-up line

    def __init__(
        self, cfg, family: FamilyAdapter, model_dir: Path | None, pipe, noise_scheduler, total_steps: int
    ):  # fmt: skip
        if len(family.rows) != 1:
            raise TextinvError(f"--backend jax trains SD 1.x/2.x models, not {family.name}; use --backend torch")
        if jax.process_count() > 1 and cfg.seed is None:
            raise TextinvError("a multi-host JAX run needs --seed, so every host draws the same samples")
        self.cfg, self.family, self.noise_scheduler = cfg, family, noise_scheduler
        enable_compilation_cache()
        set_matmul_precision(cfg.allow_tf32)
        keep_freed_memory()  # XLA allocates each step's temporaries afresh: reuse them, do not fault them in
        text_encoder, unet = load_models(
            model_dir, pipe, cfg.mixed_precision, cfg.variant, gradient_checkpointing=cfg.gradient_checkpointing
        )
        if not cfg.validation_prompt and not cfg.save_as_full_pipeline:
            # Nothing samples with or saves the torch UNet: its weights beside the Flax copy would double the memory.
            pipe.unet.to("meta")
        scale = cfg.gradient_accumulation_steps * cfg.train_batch_size * data_parallel_size()
        self.learning_rate = cfg.learning_rate * (scale if cfg.scale_lr else 1)
        first_new_id = family.placeholders[0].ids[0]
        self.engine = JaxBackend(
            text_encoder, unet, first_new_id, optimizer_config(cfg, self.learning_rate, total_steps)
        )
        self.state = self.engine.init_state(family.rows[0].detach().cpu().float().numpy())
        release_freed_memory()  # the weights' host copies, read one by one
        self.steps_done = 0
        self.compiled = False  # set after the first step, which compiles
        self.kernels = cpu_kernels.KernelPlan()  # XLA chooses its own kernels; checkpoints record an empty plan
        self.posteriors: LatentPosteriors | None = None
        self.prompt_ids: torch.Tensor | None = None

    @property
    def num_replicas(self) -> int:
        return self.engine.num_devices

    def local_slice(self, global_batch: int) -> slice:
        return self.engine.local_slice(global_batch)

    @property
    def is_main_process(self) -> bool:
        return jax.process_index() == 0

    def set_data(self, posteriors: LatentPosteriors, prompt_ids: tuple[torch.Tensor, ...]) -> None:
        self.posteriors, (self.prompt_ids,) = posteriors, prompt_ids

    def plan_kernels(self, first_draws: SampleDraws, steps_left: int, resumed: dict | None, sd_sized: bool) -> None:
        """Nothing to plan: XLA compiles the whole step at its first call."""

    def forward_backward(self, micro_batches: list[SampleDraws]) -> float:
        """The whole step (forward, backward, AdamW) in one jitted call; the rows reach torch in `update`.

        A step whose loss is not finite leaves the state unchanged, so train.py's divergence stop keeps the
        last good rows exactly as with the torch backend.
        """
        batch = step_batch(micro_batches, self.posteriors, self.prompt_ids, self.noise_scheduler, self.cfg.snr_gamma)
        self.state, loss = self.engine.train_step(self.state, batch)
        if not self.compiled:
            release_freed_memory()  # what XLA's compile used; later steps reuse only the step's own temporaries
            self.compiled = True
        return loss

    def update(self) -> None:
        rows = self.family.rows[0]
        with torch.no_grad():
            rows.copy_(torch.tensor(self.engine.rows(self.state), dtype=rows.dtype, device=rows.device))
        self.steps_done += 1

    @property
    def lr(self) -> float:
        """The LR of the next step, as the torch backend's `get_last_lr()` reports it after a step."""
        return self.engine.learning_rate(self.steps_done)

    def write_payload(self, folder: Path) -> None:
        self.engine.save_state(self.state, folder)

    def read_payload(self, folder: Path) -> None:
        self.state = self.engine.load_state(self.state, folder)
        counts = [
            leaf for path, leaf in jax.tree_util.tree_leaves_with_path(self.state.opt_state) if "count" in str(path)
        ]
        self.steps_done = int(np.asarray(counts[0]))
