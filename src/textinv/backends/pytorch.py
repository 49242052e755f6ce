"""The PyTorch backend: the diffusion loss, forward + backward over a step's micro-batches, AdamW on the new rows.

Through Accelerate (device, mixed precision's loss scaling, gradient all-reduce over processes). On the CPU
the step runs inside the run's `cpu_kernels.KernelPlan`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from textinv import cpu_kernels
from textinv.data import LatentPosteriors, SampleDraws
from textinv.errors import TextinvError
from textinv.families.base import FamilyAdapter

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"


class TorchBackend:
    """Owns the optimizer and LR schedule of the family's new rows, and runs the training step's maths."""

    name = "torch"

    def __init__(self, cfg, accelerator, family: FamilyAdapter, unet, noise_scheduler, weight_dtype, total_steps: int):
        from diffusers.optimization import get_scheduler

        self.cfg, self.accelerator, self.family = cfg, accelerator, family
        self.unet, self.noise_scheduler, self.weight_dtype = unet, noise_scheduler, weight_dtype
        scale = cfg.gradient_accumulation_steps * cfg.train_batch_size * accelerator.num_processes
        self.learning_rate = cfg.learning_rate * (scale if cfg.scale_lr else 1)
        optimizer = torch.optim.AdamW(
            family.rows,
            lr=self.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=total_steps,
            num_cycles=cfg.lr_num_cycles,
        )
        self.optimizer = accelerator.prepare(optimizer)  # fp16 loss scaling, device placement of its state
        self.kernels = cpu_kernels.KernelPlan()
        self.posteriors: LatentPosteriors | None = None
        self.prompt_ids: tuple[torch.Tensor, ...] = ()

    def set_data(self, posteriors: LatentPosteriors, prompt_ids: tuple[torch.Tensor, ...]) -> None:
        """The cached posteriors and the tokenized prompt table ([images or 1, templates, L] per tokenizer)."""
        device = self.accelerator.device
        self.posteriors = posteriors
        self.prompt_ids = tuple(ids.to(device) for ids in prompt_ids)

    def plan_kernels(self, first_draws: SampleDraws, steps_left: int, resumed: dict | None, sd_sized: bool) -> None:
        """Choose the CPU kernels (`cpu_kernels.plan_cpu_kernels`) on one forward of the first batch."""
        self.kernels = cpu_kernels.plan_cpu_kernels(
            self.cfg, self.accelerator, resumed, steps_left, lambda: self.loss(first_draws), sd_sized=sd_sized
        )

    def loss(self, draws: SampleDraws) -> torch.Tensor:
        device = self.accelerator.device
        ids = select_prompts(self.prompt_ids, draws.image_idx.to(device), draws.template_idx.to(device))
        return diffusion_loss(
            draws, self.posteriors, ids, self.family, self.unet, self.noise_scheduler, device,
            self.weight_dtype, self.cfg.snr_gamma,
        )  # fmt: skip

    def forward_backward(self, micro_batches: list[SampleDraws]) -> float:
        """Accumulate the gradients of a step's micro-batches; the step's loss, averaged over processes."""
        accum = len(micro_batches)
        step_loss = torch.zeros((), device=self.accelerator.device)
        for draws in micro_batches:
            with self.kernels.active():
                loss = self.loss(draws)
                self.accelerator.backward(loss / accum)
            step_loss += loss.detach() / accum
        return float(self.accelerator.reduce(step_loss, "mean"))

    def update(self) -> None:
        """Average the gradients over processes, take the optimizer and LR-schedule step."""
        if self.accelerator.num_processes > 1:
            for rows in self.family.rows:
                rows.grad = self.accelerator.reduce(rows.grad, "mean")
        self.optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return float(self.lr_scheduler.get_last_lr()[0])

    def write_payload(self, folder: Path) -> None:
        """This backend's part of a checkpoint: optimizer and LR-schedule state."""
        torch.save(self.optimizer.state_dict(), folder / OPTIMIZER_FILE)
        torch.save(self.lr_scheduler.state_dict(), folder / SCHEDULER_FILE)

    def read_payload(self, folder: Path) -> None:
        try:
            optimizer = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
            scheduler = torch.load(folder / SCHEDULER_FILE, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise TextinvError(
                f"checkpoint {folder} is unreadable ({type(exc).__name__}); resume from an earlier checkpoint-N"
            ) from exc
        self.optimizer.load_state_dict(optimizer)
        self.lr_scheduler.load_state_dict(scheduler)


def select_prompts(prompt_ids: tuple[torch.Tensor, ...], image_idx: torch.Tensor, template_idx: torch.Tensor):
    """Each draw's prompt ids, per tokenizer: the table is [1, templates, L] (shared) or [images, templates, L]."""
    return tuple(ids[image_idx if ids.shape[0] > 1 else 0, template_idx] for ids in prompt_ids)


def diffusion_loss(
    draws, posteriors, prompt_ids, family, unet, noise_scheduler, device, weight_dtype, snr_gamma=None
):  # fmt: skip
    """MSE between the UNet's prediction and its target (ε, or v for v-prediction), Min-SNR weighted on request."""
    latents = posteriors.sample(draws.image_idx.to(device), draws.flip.to(device), draws.latent_eps.to(device))
    noise = draws.noise.to(device)
    timesteps = draws.timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    cond = family.condition(prompt_ids, draws.image_idx.to(device), weight_dtype)
    pred = unet(noisy.to(weight_dtype), timesteps, cond.hidden_states, **cond.unet_kwargs).sample
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise TextinvError(f"unsupported prediction_type {prediction_type!r} in the model's scheduler config")
    if not snr_gamma:  # None or 0: off
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(noise_scheduler, timesteps, snr_gamma, prediction_type)).mean()


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
