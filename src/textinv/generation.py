"""A `textinv generate` call as one library function, shared by the CLI and the web UI.

`generate(request)` loads the model and concepts, samples every prompt, and saves each image with its
settings (`sample.save_image_batch`) and a near-square grid. Into a folder that already holds images it
continues the numbering, as AUTOMATIC1111 does: nothing earlier is overwritten, and a call's images are
the numbered range it reports (`textinv toy score DIR --numbers A-B` scores them alone).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textinv.errors import TextinvError

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "float16", "bfloat16")
IMAGE_NAME = "{number:04d}-seed{seed}.png"
GRID_NAME = "grid-{number:04d}.png"  # numbered by the call's first image, so a call never replaces a grid
_NUMBERED = re.compile(r"^(\d+)-")


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate; None means the model's recommended value (its textinv.json), else diffusers'."""

    prompts: tuple[str, ...]
    model: str | None = None  # diffusers folder, cached hub id, single file; None: the embedded toy model
    concepts: tuple[str, ...] = ()  # SOURCE or SOURCE=TOKEN
    num_images: int = 4
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    skip_early_cfg: float | None = None
    scheduler: str | None = None
    negative: str | None = None
    height: int | None = None
    width: int | None = None
    out_dir: Path | None = None  # None: outputs/<date-time>
    device: str = "auto"
    dtype: str = "auto"


@dataclass(frozen=True)
class GenerationResult:
    out_dir: Path
    images: tuple[Path, ...]
    grid: Path
    first_number: int  # the call's images are numbered first_number ... last_number
    last_number: int


def generate(request: GenerationRequest, *, progress: bool | Callable[[int], None] = True) -> GenerationResult:
    """Generate `num_images` images per prompt into `out_dir`; image i of a prompt uses seed `seed + i`."""
    from textinv.sample import make_grid, save_image_batch

    pipe, recipe, sampler, tokens, source = _prepare(request)
    out_dir = Path(request.out_dir or Path("outputs") / time.strftime("%Y%m%d-%H%M%S"))
    first = number = next_image_number(out_dir)
    paths: list[Path] = []
    images: list[Any] = []
    # Every file of the call records the same settings; only prompt, seed and name differ.
    save = functools.partial(
        save_image_batch, out_dir, recipe=recipe, sampler=sampler, model=source, concepts=tokens,
        negative_prompt=request.negative, first_seed=request.seed,
    )  # fmt: skip
    for prompt in request.prompts:
        batch = _sample(pipe, prompt, request, recipe, progress)
        paths += save(batch, prompt=prompt, first_number=number, name_format=IMAGE_NAME)
        images += batch
        number += len(batch)
    (grid,) = save([make_grid(images)], prompt=" | ".join(request.prompts), first_number=first, name_format=GRID_NAME)
    return GenerationResult(out_dir, tuple(paths), grid, first, number - 1)


def _prepare(request: GenerationRequest):
    """Check the request, load the model and concepts, and settle the sampling recipe."""
    from textinv.concepts import load_concept, resolve_concept, token_for_prompts
    from textinv.models import load_pipeline, resolve_model_source
    from textinv.sample import check_skip_early_cfg, model_recipe, native_size, set_scheduler

    if not request.prompts:
        raise TextinvError('no prompt given; write at least one, e.g. "a photo of a <my-star>"')
    if request.num_images < 1:
        raise TextinvError("-n must be at least 1")
    if request.skip_early_cfg is not None:
        check_skip_early_cfg(request.skip_early_cfg)
    device, dtype = pick_device_and_dtype(request.device, request.dtype)
    source = resolve_model_source(request.model)
    # The flags the user gave, over the model's recommended recipe, over diffusers' (30 steps, 7.5).
    recipe = model_recipe(source).with_overrides(
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        scheduler=request.scheduler,
        skip_early_cfg=request.skip_early_cfg,
        height=request.height,
        width=request.width,
    )
    pipe = load_pipeline(source, torch_dtype=dtype, on_cpu=device == "cpu").to(device)
    tokens = []
    for concept, token in map(split_concept_arg, request.concepts):
        emb = resolve_concept(concept, token)
        tokens.append(load_concept(pipe, emb, token or token_for_prompts(emb, request.prompts)))
    for token in tokens:
        if not any(token in prompt for prompt in request.prompts):
            log.warning("note: concept %s is loaded but no prompt mentions it", token)
    size = native_size(pipe)
    recipe = recipe.with_overrides(height=recipe.height or size, width=recipe.width or size)
    sampler = set_scheduler(pipe, recipe.scheduler)
    return pipe, recipe, sampler, tokens, source


def _sample(pipe, prompt: str, request: GenerationRequest, recipe, progress) -> list[Any]:
    from textinv.sample import generate_images

    return generate_images(
        pipe,
        prompt,
        num_images=request.num_images,
        seed=request.seed,
        negative_prompt=request.negative,
        scheduler=None,  # set once for all prompts in _prepare
        progress=progress,
        **recipe.generate_kwargs(),
    )


def next_image_number(folder: Path) -> int:
    """One past the highest leading number of a file in `folder` (0 for a new or empty one), as A1111 counts."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def image_number(path: Path) -> int | None:
    """The leading number of a generated image's file name (`0012-seed3.png` -> 12), else None."""
    found = _NUMBERED.match(Path(path).name)
    return int(found.group(1)) if found else None


def split_concept_arg(value: str) -> tuple[str, str | None]:
    """`SOURCE=TOKEN` -> (SOURCE, TOKEN); a source that itself contains '=' and exists is kept whole."""
    if "=" in value and not Path(value).exists():
        source, token = value.rsplit("=", 1)
        if not token.strip():
            raise TextinvError(f"--concept {value!r}: empty token after '='; write SOURCE=TOKEN or just SOURCE")
        return source, token.strip()
    return value, None


def pick_device_and_dtype(device: str, dtype: str):
    """Resolve --device/--dtype: fp16 on GPUs by default, fp32 on CPU (fp16 on CPU is refused)."""
    import torch

    if dtype not in DTYPES:
        raise TextinvError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TextinvError("--device cuda given but no CUDA GPU is available; use --device cpu")
    on_cpu = device == "cpu"
    if dtype == "auto":
        dtype = "float32" if on_cpu else "float16"
    if dtype == "float16" and on_cpu:
        raise TextinvError("float16 needs a GPU; on CPU use --dtype float32 (default) or bfloat16")
    return device, getattr(torch, dtype)
