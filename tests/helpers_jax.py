"""The shared data path set up as `textinv train` sets it up, and a few steps trained by each backend on it.

Run as a script (`python tests/helpers_jax.py devices|hosts MODEL CONCEPT`) it trains SD1_RUN on every device
of the process, or as one process of a multi-host run; the device count and the distributed set-up must be
fixed before jax starts, hence processes of their own.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from textinv.data import SampleStream, cache_latent_posteriors, flips_drawn, load_concept_images, templates_for
from textinv.families import adapter_for
from textinv.models import load_pipeline, resolve_model_source

RESOLUTION = 32


@dataclass
class Shared:
    """What both backends share: the pipeline and family adapter (torch), posteriors, prompt table, the stream."""

    model_dir: Path
    pipe: object
    family: object
    posteriors: object
    prompt_ids: torch.Tensor  # [1, templates, L]
    scheduler: object
    stream: SampleStream

    @property
    def rows(self) -> torch.nn.Parameter:
        return self.family.rows[0]

    @property
    def first_new_id(self) -> int:
        return self.family.placeholders[0].ids[0]


def shared_setup(model_dir: Path, concept_dir: Path, num_vectors: int = 1, seed: int = 0) -> Shared:
    from diffusers import DDPMScheduler

    pipe = load_pipeline(resolve_model_source(str(model_dir)), torch_dtype=torch.float32)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    family = adapter_for(pipe)
    family.add_placeholder("<cat-toy>", num_vectors, "toy")
    images, _ = load_concept_images(concept_dir)
    posteriors = cache_latent_posteriors(pipe.vae, images, RESOLUTION, False, "cpu", torch.float32, flips_drawn(0.5))
    (prompt_ids,) = family.tokenize([t.format(family.prompt_string) for t in templates_for("object")])
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    stream = SampleStream(
        seed=seed,
        num_images=len(images),
        repeats=100,
        num_templates=len(prompt_ids),
        latent_shape=posteriors.latent_shape,
        num_train_timesteps=scheduler.config.num_train_timesteps,
    )
    return Shared(Path(model_dir), pipe, family, posteriors, prompt_ids[None], scheduler, stream)


def step_draws(shared: Shared, step: int, batch: int, accum: int, part: slice | None = None) -> list:
    """The micro-batches of optimisation step `step`, at the stream positions train.py gives them.

    `part`: the samples of each global micro-batch this process draws (a multi-host run's share).
    """
    part = part or slice(0, batch)
    first = step * batch * accum
    return [
        shared.stream.draw(range(first + m * batch + part.start, first + m * batch + part.stop)) for m in range(accum)
    ]


def train_torch(shared: Shared, optim, steps: int, batch: int, accum: int, snr_gamma=None):
    """The torch backend's loss, torch AdamW and diffusers' schedule on the shared draws: (losses, final rows)."""
    from diffusers.optimization import get_scheduler

    from textinv.backends.pytorch import diffusion_loss, select_prompts

    rows = shared.rows
    start = rows.detach().clone()
    optimizer = torch.optim.AdamW(
        [rows], lr=optim.learning_rate, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay,
        eps=optim.epsilon,
    )  # fmt: skip
    schedule = get_scheduler(
        optim.lr_scheduler, optimizer=optimizer, num_warmup_steps=optim.lr_warmup_steps,
        num_training_steps=optim.total_steps, num_cycles=optim.lr_num_cycles,
    )  # fmt: skip
    losses = []
    for step in range(steps):
        step_loss = 0.0
        for draws in step_draws(shared, step, batch, accum):
            ids = select_prompts((shared.prompt_ids,), draws.image_idx, draws.template_idx)
            loss = diffusion_loss(
                draws, shared.posteriors, ids, shared.family, shared.pipe.unet, shared.scheduler,
                torch.device("cpu"), torch.float32, snr_gamma,
            )  # fmt: skip
            (loss / accum).backward()
            step_loss += float(loss.detach()) / accum
        losses.append(step_loss)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    final = rows.detach().clone().numpy()
    with torch.no_grad():
        rows.copy_(start)  # the shared setup serves the next backend from the same start
    return losses, final


def make_backend(shared: Shared, optim, devices=None, mixed_precision: str = "no"):
    from textinv.backends.jax.backend import JaxBackend, load_models

    text_encoder, unet = load_models(shared.model_dir, shared.pipe, mixed_precision)
    return JaxBackend(text_encoder, unet, shared.first_new_id, optim, devices=devices)


def train_jax(shared: Shared, backend, steps: int, batch: int, accum: int, snr_gamma=None, state=None, first=0):
    """The JAX backend on the same draws: (losses, final rows, state). `batch` is the global batch."""
    from textinv.backends.jax.batch import step_batch

    if state is None:
        state = backend.init_state(shared.rows.detach().numpy())
    losses = []
    for step in range(first, first + steps):
        draws = step_draws(shared, step, batch, accum, backend.local_slice(batch))
        arrays = step_batch(draws, shared.posteriors, shared.prompt_ids, shared.scheduler, snr_gamma)
        state, loss = backend.train_step(state, arrays)
        losses.append(loss)
    return losses, backend.rows(state), state


def moved_fraction(a: np.ndarray, b: np.ndarray, start: np.ndarray) -> float:
    """|a - b| as a fraction of how far training moved the rows from `start`."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(a - start))


# The run the SD-1 tests share: two vectors, global batch 2, two micro-batches per step, a warm-up then linear decay.
SD1_RUN = {"num_vectors": 2, "steps": 4, "batch": 2, "accum": 2}


def sd1_optimizer():
    from textinv.backends.jax.step import OptimizerConfig

    return OptimizerConfig(learning_rate=5e-3, lr_scheduler="linear", lr_warmup_steps=1, total_steps=SD1_RUN["steps"])


def _devices_main(model_dir: str, concept_dir: str) -> None:
    """SD1_RUN on every device of this process (set the XLA device count before): its losses and rows as JSON."""
    import jax

    shared = shared_setup(Path(model_dir), Path(concept_dir), num_vectors=SD1_RUN["num_vectors"])
    backend = make_backend(shared, sd1_optimizer(), devices=jax.devices())
    losses, rows, _ = train_jax(shared, backend, SD1_RUN["steps"], SD1_RUN["batch"], SD1_RUN["accum"])
    print(json.dumps({"devices": backend.num_devices, "losses": losses, "rows": rows.tolist()}))


def _hosts_main(model_dir: str, concept_dir: str) -> None:
    """SD1_RUN as one process of a multi-host run on this machine (JAX_* variables set by the caller)."""
    import jax

    from textinv.backends.jax.distributed import join_distributed

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    assert join_distributed()
    shared = shared_setup(Path(model_dir), Path(concept_dir), num_vectors=SD1_RUN["num_vectors"])
    backend = make_backend(shared, sd1_optimizer())
    losses, rows, _ = train_jax(shared, backend, SD1_RUN["steps"], SD1_RUN["batch"], SD1_RUN["accum"])
    part = backend.local_slice(SD1_RUN["batch"])
    print(
        json.dumps(
            {"devices": backend.num_devices, "part": [part.start, part.stop], "losses": losses, "rows": rows.tolist()}
        )
    )


if __name__ == "__main__":
    {"devices": _devices_main, "hosts": _hosts_main}[sys.argv[1]](sys.argv[2], sys.argv[3])
