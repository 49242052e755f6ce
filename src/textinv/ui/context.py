"""What one `textinv ui` server holds: its model, its output root, the training worker, the generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textinv.ui.generation import Generator
from textinv.ui.worker import TrainingWorker


@dataclass
class UiContext:
    model: str | None
    output_root: Path
    worker: TrainingWorker = field(default_factory=TrainingWorker)
    generator: Generator | None = None
    last_given: dict[str, Any] | None = None  # the last training started, for Resume

    def __post_init__(self) -> None:
        self.output_root = Path(self.output_root)
        if self.generator is None:
            self.generator = Generator(self.model)

    @property
    def generated_dir(self) -> Path:
        """Generated images go beside the concepts, in a folder the concept list never mistakes for one."""
        return self.output_root / "generated"
