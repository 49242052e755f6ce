"""Training progress as events, and a way to ask a run to stop.

`train()` reports what happens (a step, a checkpoint, validation images) to subscribers instead of
printing: the CLI's progress bar, the trackers (TensorBoard, W&B) and the web UI are all subscribers.
A `StopRequest` lets Ctrl-C or a UI button end a run at the next step boundary, with a checkpoint
written, so that `--resume_from_checkpoint latest` continues it bitwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunStarted:
    """Set-up is done; the first step comes next."""

    output_dir: Path
    start_step: int
    total_steps: int
    placeholder_token: str


@dataclass(frozen=True)
class StepDone:
    step: int
    total_steps: int
    loss: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path


@dataclass(frozen=True)
class EmbeddingSaved:
    """An embedding file was written: a `-steps-N` copy, or the final `learned_embeds.safetensors`."""

    step: int
    path: Path


@dataclass(frozen=True)
class ValidationDone:
    step: int
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class RunFinished:
    step: int
    embedding_path: Path
    stopped: bool  # ended early by a stop request


Event = RunStarted | StepDone | CheckpointSaved | EmbeddingSaved | ValidationDone | RunFinished
Subscriber = Callable[[Event], None]


class StopRequest:
    """Thread- and signal-safe flag: `request()` from anywhere; the loop checks `requested` between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


class EventBus:
    """Calls each subscriber with each event, in order; silent on processes other than the main one."""

    def __init__(self, subscribers: Sequence[Subscriber], enabled: bool = True):
        self._subscribers = list(subscribers)
        self._enabled = enabled

    def emit(self, event: Event) -> None:
        if self._enabled:
            for subscriber in self._subscribers:
                subscriber(event)
