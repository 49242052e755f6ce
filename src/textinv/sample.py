"""Generating images with a learned concept: used by `textinv generate` and by training validation.

Small on purpose, so the trainer can call it (a whole `textinv generate` call is `generation.generate`):

    recipe = SamplingRecipe(num_inference_steps=30, guidance_scale=7.5)
    images = generate_images(pipe, "a <cat-toy> backpack", num_images=4, seed=0, **recipe.generate_kwargs())
    paths = save_image_batch(out, images, prompt="a <cat-toy> backpack", first_seed=0, recipe=recipe,
                             sampler=set_scheduler(pipe, None), model=source, concepts=["<cat-toy>"])

Image `i` of a call uses seed `seed + i` (as AUTOMATIC1111 numbers them), drawn on the CPU so the
same seed gives the same starting noise on any device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from textinv import __version__
from textinv.atomic import write_atomic
from textinv.errors import TextinvError

log = logging.getLogger(__name__)
# Short name -> (diffusers scheduler class, extra config, the sampler name AUTOMATIC1111 shows).
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "dpm": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "dpm-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "pndm": ("PNDMScheduler", {}, "PLMS"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "ddpm": ("DDPMScheduler", {}, "DDPM"),
}
# How AUTOMATIC1111 names the samplers of the model's own scheduler, for the infotext.
_SAMPLER_BY_CLASS = {cls: a1111 for cls, extra, a1111 in SCHEDULERS.values() if not extra}
PARAMETERS_CHUNK = "parameters"  # the PNG text key AUTOMATIC1111 writes and reads ("PNG Info")


@dataclasses.dataclass(frozen=True)
class SamplingRecipe:
    """How to sample a model: steps, guidance, sampler, skip-early-CFG and image size.

    `textinv generate`, training validation and the toy demo all read a model's recommended recipe
    (the `generate` section of its textinv.json) through `model_recipe`, so they sample alike and a
    bad value in that file is refused when it is read, not halfway through a training run.
    """

    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    scheduler: str | None = None  # a SCHEDULERS key; None keeps the pipeline's own
    skip_early_cfg: float = 0.0
    height: int | None = None  # None: the model's native size
    width: int | None = None

    def with_overrides(self, **changes: Any) -> SamplingRecipe:
        """This recipe with every change that is not None (command-line flags the user gave)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def generate_kwargs(self) -> dict[str, Any]:
        """The `generate_images` keywords this recipe sets (the scheduler is set once, separately)."""
        return {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "skip_early_cfg": self.skip_early_cfg,
            "height": self.height,
            "width": self.width,
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any, least: int = 1, step: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least and value % step == 0


def _is_scheduler(value: Any) -> bool:
    return value is None or (isinstance(value, str) and scheduler_key(value) in SCHEDULERS)


def _is_size(value: Any) -> bool:
    return value is None or _is_count(value, least=8, step=8)


# Each recipe field: (check, what a good value is).
_RECIPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_inference_steps": (_is_count, "an integer >= 1"),
    "guidance_scale": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "scheduler": (_is_scheduler, f"one of {', '.join(SCHEDULERS)}"),
    "skip_early_cfg": (lambda v: _is_number(v) and 0 <= v <= 1, "a fraction of the steps, 0 to 1"),
    "height": (_is_size, "a multiple of 8"),
    "width": (_is_size, "a multiple of 8"),
}


def recipe_from_settings(settings: dict[str, Any], where: str, base: SamplingRecipe | None = None) -> SamplingRecipe:
    """`base` with the values of a `generate` settings dict, each checked; `where` names the file for errors."""
    known = {k: v for k, v in settings.items() if k in _RECIPE_CHECKS}
    for key in sorted(set(settings) - set(known)):
        log.warning("%s: ignoring unknown generate setting %r", where, key)
    for key, value in known.items():
        ok, wanted = _RECIPE_CHECKS[key]
        if not ok(value):
            raise TextinvError(f'{where}: "generate.{key}" must be {wanted} (got {value!r}); fix or delete it')
    return dataclasses.replace(base or SamplingRecipe(), **known)


def model_recipe(source: Any, base: SamplingRecipe | None = None) -> SamplingRecipe:
    """The model's recommended sampling recipe (textinv.json's `generate` section) over `base`."""
    from textinv.models import DEFAULTS_FILE, model_defaults, snapshot_dir

    folder = snapshot_dir(source)
    where = str(folder / DEFAULTS_FILE) if folder is not None else DEFAULTS_FILE
    return recipe_from_settings(model_defaults(source, "generate"), where, base)


def scheduler_key(name: str) -> str:
    """A scheduler name as `SCHEDULERS` spells it: euler_a, Euler-A and euler-a are one."""
    return name.lower().replace("_", "-")


def set_scheduler(pipe: Any, name: str | None) -> str:
    """Swap the pipeline's scheduler for `name` (keeping its noise schedule); return the A1111 sampler name."""
    import diffusers

    if name is None:
        cls = type(pipe.scheduler).__name__
        return _SAMPLER_BY_CLASS.get(cls, cls)
    key = scheduler_key(name)
    if key not in SCHEDULERS:
        raise TextinvError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls_name, extra, sampler = SCHEDULERS[key]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
    return sampler


def native_size(pipe: Any) -> int:
    """The image side the model was trained at (UNet sample size x VAE scale factor)."""
    return int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))


def generate_images(
    pipe: Any,
    prompt: str,
    *,
    num_images: int = 1,
    seed: int = 0,
    num_inference_steps: int = 30,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    scheduler: str | None = None,
    progress: bool | Callable[[int], None] = True,
    batch_size: int | None = None,
    skip_early_cfg: float = 0.0,
) -> list[Image.Image]:
    """Generate `num_images` images for `prompt`; image i uses seed `seed + i`.

    `progress`: True shows a tqdm bar over all denoising steps, False shows nothing, a callable
    receives the number of steps done after each step. `scheduler` is a `SCHEDULERS` key (None
    keeps the pipeline's own). Sizes default to the model's native size. `skip_early_cfg`: see
    `unguided_step`.
    """
    if num_images < 1 or num_inference_steps < 1:
        raise TextinvError("need at least one image and one inference step (-n >= 1, --steps >= 1)")
    check_skip_early_cfg(skip_early_cfg)
    size = native_size(pipe)
    height, width = height or size, width or size
    if height % 8 or width % 8:
        raise TextinvError(f"--height/--width must be multiples of 8 (got {height}x{width})")
    set_scheduler(pipe, scheduler)
    batch_size = batch_size or num_images
    # Some schedulers (Heun) take more loop iterations than inference steps; count what will run.
    pipe.scheduler.set_timesteps(num_inference_steps)
    total = len(pipe.scheduler.timesteps)
    bar, report = _progress(progress, num_images * total)
    pipe.set_progress_bar_config(disable=True)
    done = 0

    def guidance_at(step: int) -> float:
        if guidance_scale > 1 and unguided_step(step, total, skip_early_cfg):
            return _UNGUIDED
        return guidance_scale

    def on_step_end(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        nonlocal done
        done += len(batch)
        report(done)
        # diffusers reads the scale afresh each step (its callback docs change it the same way).
        _pipe._guidance_scale = guidance_at(step + 1)
        return kwargs

    images: list[Image.Image] = []
    try:
        with _prompt_half_only(pipe.unet, lambda: pipe._guidance_scale == _UNGUIDED):
            for start in range(0, num_images, batch_size):
                batch = range(start, min(start + batch_size, num_images))
                generators = [torch.Generator("cpu").manual_seed(seed + i) for i in batch]
                with torch.inference_mode():
                    out = pipe(
                        prompt,
                        negative_prompt=negative_prompt or None,
                        num_images_per_prompt=len(batch),
                        num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_at(0),
                        height=height,
                        width=width,
                        generator=generators,
                        callback_on_step_end=on_step_end,
                    )
                images.extend(out.images)
    finally:
        if bar is not None:
            bar.close()
    return images


@contextlib.contextmanager
def _prompt_half_only(unet: torch.nn.Module, unguided: Callable[[], bool]) -> Iterator[None]:
    """On unguided steps, run the UNet on the prompt's half of diffusers' [negative; prompt] batch only.

    The pipeline still batches both halves (its guidance scale is just above 1), but an unguided step's
    result is the prompt's prediction alone, so the negative half is skipped and the prompt half returned for
    both: guidance then gives exactly the prompt's prediction, at half the UNet's cost for those steps.
    """
    forward = unet.__dict__.get("forward")  # an instance-level forward (a wrapper, a test's spy) stays inside
    call = forward or unet.forward

    def halved(sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any):
        n = sample.shape[0]
        if args or n % 2 or not unguided():  # diffusers' pipelines pass all but these two by keyword
            return call(sample, timestep, *args, **kwargs)

        def half(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: half(v) for k, v in value.items()}
            batched = isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n
            return value[n // 2 :] if batched else value

        out = call(half(sample), half(timestep), **half(kwargs))
        if isinstance(out, tuple):
            return (torch.cat([out[0], out[0]]), *out[1:])
        out.sample = torch.cat([out.sample, out.sample])
        return out

    unet.forward = halved
    try:
        yield
    finally:
        if forward is None:
            del unet.forward
        else:
            unet.forward = forward


# Above 1, so diffusers keeps the unconditional branch batched for the guided steps that follow; as a
# float32 or float16 factor it is exactly 1, so an unguided step is the prompt's prediction alone.
_UNGUIDED = math.nextafter(1.0, 2.0)


def unguided_step(step: int, total: int, skip_early_cfg: float) -> bool:
    """Whether denoising step `step` of `total` skips classifier-free guidance.

    As AUTOMATIC1111's "Ignore negative prompt during early sampling" (infotext `Skip Early CFG`):
    step i is unguided while i / total <= skip_early_cfg, so 0 guides every step. Why: the noisiest
    steps decide what a prompt leaves open (a colour, a layout); guiding them too pushes every sample
    the same way (Kynkaanniemi et al. 2024, guidance in a limited interval).
    """
    return skip_early_cfg > 0 and step / total <= skip_early_cfg


def check_skip_early_cfg(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise TextinvError(f"--skip-early-cfg is a fraction of the steps: give 0 (off) to 1 (got {value})")


def _progress(progress: bool | Callable[[int], None], total: int):
    if callable(progress):
        return None, progress
    if not progress:
        return None, lambda _done: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="step", desc="generating", leave=False)

    def report(done: int) -> None:
        bar.update(done - bar.n)

    return bar, report


def infotext(
    prompt: str,
    *,
    seed: int,
    steps: int,
    guidance_scale: float,
    width: int,
    height: int,
    sampler: str,
    negative_prompt: str | None = None,
    model: str | None = None,
    concepts: Sequence[str] = (),
    skip_early_cfg: float = 0.0,
) -> str:
    """The generation settings as AUTOMATIC1111 writes them in a PNG's `parameters` chunk.

    Layout: the prompt, then `Negative prompt: ...`, then one `Key: value, ...` line; values with
    commas or colons are JSON-quoted, as A1111's own parser expects.
    """
    fields: list[tuple[str, Any]] = [
        ("Steps", steps),
        ("Sampler", sampler),
        ("CFG scale", _number(guidance_scale)),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
    ]
    if skip_early_cfg:
        fields.append(("Skip Early CFG", _number(skip_early_cfg)))
    if model:
        fields.append(("Model", model))
    if concepts:
        fields.append(("Textual inversion", ", ".join(concepts)))
    fields.append(("Version", f"textinv {__version__}"))
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields))
    return "\n".join(lines)


def save_image_batch(
    folder: str | os.PathLike,
    images: Sequence[Image.Image],
    *,
    prompt: str,
    first_seed: int,
    recipe: SamplingRecipe,
    sampler: str,
    model: Any = None,
    concepts: Sequence[str] = (),
    negative_prompt: str | None = None,
    first_number: int = 0,
    name_format: str = "{number:02d}.png",
) -> list[Path]:
    """Save a batch of `generate_images` output, each PNG with its A1111 infotext; return the paths.

    The one place where image files get their settings written (`textinv generate`, training validation,
    the web UI): image i has seed `first_seed + i` and is named `name_format` with `number` =
    `first_number + i` and `seed`. `model` (a `ModelSource` or a name) is written by its shareable name,
    never as a local path.
    """
    from textinv.models import shareable_model_name

    model_name = shareable_model_name(model) if model is not None else None
    paths = []
    for i, image in enumerate(images):
        seed = first_seed + i
        text = infotext(
            prompt,
            seed=seed,
            steps=recipe.num_inference_steps,
            guidance_scale=recipe.guidance_scale,
            width=image.width,
            height=image.height,
            sampler=sampler,
            negative_prompt=negative_prompt,
            model=model_name,
            concepts=concepts,
            skip_early_cfg=recipe.skip_early_cfg,
        )
        name = name_format.format(number=first_number + i, seed=seed)
        paths.append(save_png(Path(folder) / name, image, text))
    return paths


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _quote(value: Any) -> str:
    import json

    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def save_png(path: str | os.PathLike, image: Image.Image, parameters: str | None = None) -> Path:
    """Save `image` as PNG atomically, with `parameters` in a text chunk other tools (A1111, ...) read."""
    info = PngInfo()
    if parameters:
        info.add_text(PARAMETERS_CHUNK, parameters)
    return write_atomic(path, lambda p: image.save(p, format="PNG", pnginfo=info))


def make_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    """Tile images (same size) into a near-square grid, row by row."""
    if not images:
        raise TextinvError("no images to put in a grid")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid
