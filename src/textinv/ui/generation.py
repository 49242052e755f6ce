"""The Generate tab's call into the library: a pipeline kept between requests, concepts loaded, PNGs written.

The pipeline is kept while the requested concepts stay the same files (same paths, same modification
times); any change reloads it, because a token cannot be loaded twice into one tokenizer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from textinv.errors import TextinvError
from textinv.ui.uploads import unused_path


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    num_images: int = 4
    seed: int = 0
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None


def _concept_key(concepts: list[str]) -> tuple[tuple[str, int], ...]:
    key = []
    for source in concepts:
        path = Path(source)
        key.append((str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0))
    return tuple(key)


class Generator:
    """One model, its pipeline loaded on first use; `generate` is serialised (one pipeline, one request)."""

    def __init__(self, model: str | None):
        self.model = model
        self._lock = threading.Lock()
        self._pipe = None
        self._key: tuple | None = None
        self._tokens: list[str] = []

    def _pipeline(self, concepts: list[str]):
        from textinv.commands.generate import pick_device_and_dtype
        from textinv.concepts import load_concept
        from textinv.models import load_pipeline, resolve_model_source

        key = _concept_key(concepts)
        if self._pipe is None or key != self._key:
            device, dtype = pick_device_and_dtype("auto", "auto")
            pipe = load_pipeline(resolve_model_source(self.model), torch_dtype=dtype).to(device)
            self._tokens = [load_concept(pipe, source) for source in concepts]
            self._pipe, self._key = pipe, key
        return self._pipe

    def generate(self, request: GenerateRequest, concepts: list[str], out_dir: Path) -> list[Path]:
        """PNGs with A1111-style `parameters`, written to `out_dir`; image i uses seed + i."""
        from textinv.models import resolve_model_source
        from textinv.sample import generate_images, infotext, model_recipe, native_size, save_png, set_scheduler

        if not request.prompt.strip():
            raise TextinvError("write a prompt, e.g. 'a photo of a <my-star>'")
        if request.num_images < 1:
            raise TextinvError("number of images must be at least 1")
        with self._lock:
            pipe = self._pipeline(concepts)
            source = resolve_model_source(self.model)
            recipe = model_recipe(source).with_overrides(
                num_inference_steps=request.steps, guidance_scale=request.guidance
            )
            size = native_size(pipe)
            recipe = recipe.with_overrides(height=recipe.height or size, width=recipe.width or size)
            sampler = set_scheduler(pipe, recipe.scheduler)
            images = generate_images(
                pipe,
                request.prompt,
                num_images=request.num_images,
                seed=request.seed,
                negative_prompt=request.negative_prompt or None,
                scheduler=None,
                progress=False,
                **recipe.generate_kwargs(),
            )
            folder = unused_path(Path(out_dir) / time.strftime("%Y%m%d-%H%M%S"))
            folder.mkdir(parents=True)  # under the lock: two requests in one second get two folders
            paths = []
            for i, image in enumerate(images):
                text = infotext(
                    request.prompt,
                    seed=request.seed + i,
                    steps=recipe.num_inference_steps,
                    guidance_scale=recipe.guidance_scale,
                    width=recipe.width,
                    height=recipe.height,
                    sampler=sampler,
                    negative_prompt=request.negative_prompt or None,
                    model="textinv-toy" if source.kind == "toy" else Path(source.path_or_id).name,
                    concepts=self._tokens,
                    skip_early_cfg=recipe.skip_early_cfg,
                )
                paths.append(save_png(folder / f"{i:02d}-seed{request.seed + i}.png", image, text))
            return paths
