"""What each training sample asks of the denoiser: the noised latents, the target (ε or v), the Min-SNR weight.

Made on the host with diffusers' own scheduler (`add_noise`, `get_velocity`) from the shared `SampleStream`
draws, so every backend trains on the same numbers; a backend only runs the models and the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from textinv.errors import TextinvError


@dataclass
class DenoisingTargets:
    noisy: torch.Tensor  # [B, C, h, w], the latents' dtype (fp32)
    target: torch.Tensor  # [B, C, h, w] fp32
    timesteps: torch.Tensor  # [B] long
    weights: torch.Tensor  # [B] fp32: Min-SNR weights, ones when off


def denoising_targets(latents, noise, timesteps, noise_scheduler, snr_gamma: float | None) -> DenoisingTargets:
    """Noise `latents` at `timesteps` and name what the UNet must predict, and each sample's loss weight."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise TextinvError(f"unsupported prediction_type {prediction_type!r} in the model's scheduler config")
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if snr_gamma:
        weights = min_snr_weights(noise_scheduler, timesteps, snr_gamma, prediction_type).float()
    else:
        weights = torch.ones(len(timesteps), device=timesteps.device)
    return DenoisingTargets(noisy, target.float(), timesteps, weights)


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weights: min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR + 1) for v-prediction.

    Written as a clamp so that a zero-terminal-SNR schedule (SNR = 0 at the last timestep) gives the
    limits 1 (ε) and 0 (v) instead of 0/0.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    if prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1)
    return torch.clamp(gamma / snr, max=1.0)
