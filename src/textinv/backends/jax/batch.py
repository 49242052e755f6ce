"""One optimisation step's draws → the numpy arrays the jitted step takes (leading axis: micro-batch)."""

from __future__ import annotations

import numpy as np
import torch

from textinv.backends.pytorch import select_prompts
from textinv.data import LatentPosteriors, SampleDraws
from textinv.targets import denoising_targets


def step_batch(
    micro_draws: list[SampleDraws],
    posteriors: LatentPosteriors,
    prompt_ids: torch.Tensor,
    noise_scheduler,
    snr_gamma: float | None,
) -> dict[str, np.ndarray]:
    """Latents from the shared posterior cache, noised by diffusers' scheduler, with their prompts' token ids.

    `prompt_ids` is the tokenized prompt table, [1 or images, templates, L] (`backends.pytorch.select_prompts`).
    """
    parts: dict[str, list[np.ndarray]] = {"noisy": [], "target": [], "timesteps": [], "weights": [], "input_ids": []}
    device = posteriors.mean.device
    for draws in micro_draws:
        latents = posteriors.sample(draws.image_idx.to(device), draws.flip.to(device), draws.latent_eps)
        made = denoising_targets(
            latents, draws.noise.to(device), draws.timesteps.to(device), noise_scheduler, snr_gamma
        )
        parts["noisy"].append(made.noisy.cpu().numpy())
        parts["target"].append(made.target.cpu().numpy())
        parts["timesteps"].append(made.timesteps.cpu().numpy().astype(np.int32))
        parts["weights"].append(made.weights.cpu().numpy())
        where = prompt_ids.device
        (ids,) = select_prompts((prompt_ids,), draws.image_idx.to(where), draws.template_idx.to(where))
        parts["input_ids"].append(ids.cpu().numpy().astype(np.int32))
    return {name: np.stack(arrays) for name, arrays in parts.items()}
