"""The demo loop on the toy model: make a concept, learn it with the real trainer, generate, score, draw.

It uses the same library calls as `textinv train` and `textinv generate` (no toy special cases),
with the toy model's recommended settings from its textinv.json.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from textinv.errors import TextinvError
from textinv.toy import judge, world

PLACEHOLDER = "<concept>"
BASELINE_PROMPT = "a photo of a {}"


def side_by_side(columns: Sequence[tuple[str, Sequence[Image.Image]]], scale: int = 3, rows: int = 4) -> Image.Image:
    """Panels of images side by side, each panel `rows` high and titled; pixels scaled up to be seen."""
    cell = world.IMAGE_SIZE * scale
    pad, title_h = 8, 16
    panels = []
    for title, images in columns:
        cols = max(1, -(-len(images) // rows))
        panel = Image.new("RGB", (cols * cell, title_h + rows * cell), "white")
        ImageDraw.Draw(panel).text((2, 2), title, fill="black")
        for i, im in enumerate(images):
            tile = im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            panel.paste(tile, ((i // rows) * cell, title_h + (i % rows) * cell))
        panels.append(panel)
    width = sum(p.width for p in panels) + pad * (len(panels) - 1)
    grid = Image.new("RGB", (width, panels[0].height), "white")
    x = 0
    for panel in panels:
        grid.paste(panel, (x, 0))
        x += panel.width + pad
    return grid


def learn(
    data_dir: str | Path,
    initializer: str,
    out_dir: str | Path,
    *,
    placeholder: str = PLACEHOLDER,
    learnable_property: str = "object",
    seed: int = 0,
    model: str | None = None,
    **overrides: Any,
):
    """`textinv train` on the toy model (or `model`) with its recommended settings and any `overrides`."""
    from textinv.config import build_config
    from textinv.models import model_defaults, resolve_model_source
    from textinv.train import train

    given = {
        "train_data_dir": str(data_dir),
        "placeholder_token": placeholder,
        "initializer_token": initializer,
        "learnable_property": learnable_property,
        "output_dir": str(out_dir),
        "overwrite_output_dir": True,
        "seed": seed,
        **({"pretrained_model_name_or_path": model} if model else {}),
        **overrides,
    }
    return train(build_config(given, model_defaults(resolve_model_source(model), "train", learnable_property)))


def toy_pipeline(model: str | None = None):
    """The model in float32: the toy weights ship in fp16, which CPUs cannot run every op in."""
    import torch

    from textinv.models import load_pipeline, resolve_model_source

    return load_pipeline(resolve_model_source(model), torch_dtype=torch.float32)


def sample(
    pipe, prompt: str, num_images: int, seed: int = 0, model: str | None = None, **overrides: Any
) -> list[Image.Image]:
    """`textinv generate` at the model's recommended settings (the toy model's by default)."""
    from textinv.models import resolve_model_source
    from textinv.sample import generate_images, model_recipe

    recipe = model_recipe(resolve_model_source(model)).with_overrides(**overrides)
    return generate_images(
        pipe,
        prompt,
        num_images=num_images,
        seed=seed,
        scheduler=recipe.scheduler,
        progress=False,
        **recipe.generate_kwargs(),
    )


def run_demo(
    concept: str,
    out_dir: str | Path,
    *,
    num_images: int = 16,
    seed: int = 0,
    report: Callable[[str], None] = lambda _m: None,
    model: str | None = None,
    train_overrides: dict[str, Any] | None = None,
    sample_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Learn `concept` ("orange star") on the toy model; return the judge's scores and the grid's path.

    `model` and the overrides exist for tests of the loop on tiny random pipelines.
    """
    from textinv.concepts import load_concept

    colour, shape = world.parse_concept(concept)
    if colour is None:
        raise TextinvError(
            f"the demo learns a colour and a shape; write e.g. 'orange {shape}' (colours: {', '.join(world.COLOURS)})"
        )
    out = Path(out_dir)
    if (out / "embedding").is_dir():
        # The demo's own earlier run: replaced, and said so in the demo's words (the user passed no
        # --overwrite_output_dir, so the trainer's message about that flag would puzzle them).
        shutil.rmtree(out / "embedding")
        report(f"demo: replacing the earlier demo run in {out}")
    data_dir = out / "concept"
    paths = world.write_concept_images(concept, data_dir, 5, seed=seed + 1)
    report(f"demo: wrote 5 images of {world.with_article(concept)} to {data_dir}")
    result = learn(data_dir, shape, out / "embedding", seed=seed, model=model, **(train_overrides or {}))
    report(f"demo: learned {PLACEHOLDER} in {result.global_step} steps")

    pipe = toy_pipeline(model)
    extra = sample_overrides or {}
    baseline = sample(pipe, BASELINE_PROMPT.format(shape), num_images, seed, model, **extra)
    # The output folder, not `embedding_path`: an SDXL concept is two files, one per text encoder.
    load_concept(pipe, out / "embedding", PLACEHOLDER)
    learned = sample(pipe, BASELINE_PROMPT.format(PLACEHOLDER), num_images, seed, model, **extra)
    for name, images in (("baseline", baseline), ("learned", learned)):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image.save(out / name / f"{i:03d}.png")
    training = [Image.open(p).convert("RGB") for p in paths]
    grid = side_by_side([("training images", training), (f"'{shape}' alone", baseline), (PLACEHOLDER, learned)])
    grid_path = out / "grid.png"
    grid.save(grid_path)
    return {
        "concept": concept,
        "steps": result.global_step,
        "baseline": judge.score(baseline, concept),
        "learned": judge.score(learned, concept),
        "grid": str(grid_path),
    }
