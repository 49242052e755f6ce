"""The Generate tab's call into the library (`textinv.generation.generate`, shared with `textinv generate`).

One request at a time per server: the lock keeps two requests from loading two models into memory at once.
The library continues the numbering in the output folder, so nothing generated earlier is overwritten.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from textinv.errors import TextinvError


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    num_images: int = 4
    seed: int = 0
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None


class Generator:
    """Generates with the server's model; concepts are sources `textinv generate --concept` accepts."""

    def __init__(self, model: str | None):
        self.model = model
        self._lock = threading.Lock()

    def generate(self, request: GenerateRequest, concepts: list[str], out_dir: Path) -> list[Path]:
        """PNGs with A1111-style `parameters`, written to `out_dir`; image i uses seed + i."""
        from textinv.generation import GenerationRequest, generate

        if not request.prompt.strip():
            raise TextinvError("write a prompt, e.g. 'a photo of a <my-star>'")
        library_request = GenerationRequest(
            prompts=(request.prompt,),
            model=self.model,
            concepts=tuple(concepts),
            num_images=request.num_images,
            seed=request.seed,
            steps=request.steps,
            guidance=request.guidance,
            negative=request.negative_prompt or None,
            out_dir=Path(out_dir),
        )
        with self._lock:
            return list(generate(library_request, progress=False).images)
