"""Validation images during training: the current embedding, sampled as the model recommends, saved with infotext.

Sampling happens through the pipeline the run trains (its tokenizer holds the placeholder, its text encoder the
live rows), so the images show exactly what the embedding draws at that step.
"""

from __future__ import annotations

from pathlib import Path

from textinv.layout import validation_dir
from textinv.sample import SamplingRecipe, generate_images, save_image_batch, set_scheduler

# diffusers' script validates with DPM-Solver at 25 steps; a model's textinv.json may say otherwise.
VALIDATION_RECIPE = SamplingRecipe(num_inference_steps=25, scheduler="dpm")


def sample_validation_images(
    pipe, recipe: SamplingRecipe, cfg, *, device, model, output_dir: Path, step: int, seed: int
) -> list[Path]:
    """Generate `--num_validation_images` for `--validation_prompt`; write them as PNGs with their infotext."""
    recipe = recipe.with_overrides(height=cfg.resolution, width=cfg.resolution)
    sampler = set_scheduler(pipe, recipe.scheduler)
    vae_device = pipe.vae.device
    pipe.vae.to(device)
    images = generate_images(
        pipe,
        cfg.validation_prompt,
        num_images=cfg.num_validation_images,
        seed=seed,
        progress=False,
        **recipe.generate_kwargs(),
    )
    pipe.vae.to(vae_device)
    return save_image_batch(
        validation_dir(output_dir, step), images, prompt=cfg.validation_prompt, first_seed=seed, recipe=recipe,
        sampler=sampler, model=model, concepts=[cfg.placeholder_token],
    )  # fmt: skip
