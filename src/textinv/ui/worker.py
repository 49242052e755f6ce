"""Training in a worker process: the server stays responsive, a crash becomes one line, not a hung page.

The worker is a fresh interpreter (multiprocessing "spawn": no forked torch or server threads) running
`textinv.train.train` with a subscriber that puts each progress event on a queue; the server drains the
queue into a `RunStatus` the page renders. One training at a time per server: a second start is refused.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textinv.errors import TextinvError

# How many recent steps the ETA averages: the first steps include start-up work (kernel choice, caches).
ETA_WINDOW = 20


@dataclass
class RunStatus:
    """What the page shows about the current (or last) training."""

    state: str = "idle"  # idle | starting | running | finished | stopped | failed
    token: str = ""
    output_dir: Path | None = None
    step: int = 0
    start_step: int = 0
    total_steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    validation: list[Path] = field(default_factory=list)
    embedding_path: Path | None = None
    checkpoint: Path | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")

    @property
    def eta_seconds(self) -> float | None:
        recent = self.step_seconds[-ETA_WINDOW:]
        if not recent or not self.total_steps:
            return None
        return sum(recent) / len(recent) * max(0, self.total_steps - self.step)


def run_training(given: dict[str, Any], events: Any, stop_event: Any) -> None:
    """The worker process: build the config as `textinv train` does, train, report events; errors as one line."""
    from textinv.cpu_runtime import configure_cpu_runtime

    # What the command does first, before torch loads here: libgomp's brief spin, the JAX backend's one arena.
    configure_cpu_runtime(["train", "--backend", str(given.get("backend") or "torch")])
    try:
        from textinv.cli import quiet_libraries
        from textinv.config import config_for_model
        from textinv.progress import StopRequest
        from textinv.train import train

        quiet_libraries()
        cfg, _ = config_for_model(given)
        stop = StopRequest()
        # The server asks through a process-shared event; the trainer polls its own thread-safe StopRequest.
        threading.Thread(target=lambda: stop_event.wait() and stop.request(), daemon=True).start()
        train(cfg, subscribers=[events.put], stop=stop)
    except TextinvError as exc:
        events.put(("error", str(exc)))
    except BaseException as exc:  # the page shows one line; the server's log has the rest
        import traceback

        traceback.print_exc()
        lines = str(exc).strip().splitlines()
        events.put(("error", f"training crashed: {type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")))


class TrainingWorker:
    """Starts, watches and stops the one training a server runs at a time."""

    def __init__(self, target=run_training):
        self._context = multiprocessing.get_context("spawn")
        self._target = target
        self._lock = threading.Lock()
        self._process = None
        self._events = None
        self._stop = None
        self.status = RunStatus()

    def start(self, given: dict[str, Any]) -> RunStatus:
        """Start training `given` (TrainConfig field values) in a new process; refuse while one runs."""
        with self._lock:
            self._drain()
            if self.status.active:
                raise TextinvError(
                    f"a training ({self.status.token}) is already running on this server; wait for it to "
                    "finish or press Stop"
                )
            self._events, self._stop = self._context.Queue(), self._context.Event()
            self.status = RunStatus(
                state="starting", token=str(given.get("placeholder_token", "")), output_dir=Path(given["output_dir"])
            )
            self._process = self._context.Process(
                target=self._target, args=(given, self._events, self._stop), name="textinv-train", daemon=True
            )
            self._process.start()
            return self.status

    def stop(self) -> None:
        """Ask the run to stop after its current step; it saves a checkpoint and the embedding first."""
        if self._stop is not None and self.status.active:
            self._stop.set()

    def poll(self) -> RunStatus:
        """Apply the events that arrived; notice a worker that died without saying why."""
        with self._lock:
            self._drain()
            return self.status

    def wait(self, timeout: float, interval: float = 0.2) -> RunStatus:
        """Poll until the run ends or `timeout` seconds pass (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while self.poll().active and time.monotonic() < deadline:
            time.sleep(interval)
        return self.status

    def _drain(self) -> None:
        if self._events is None:
            return
        while True:
            try:
                self._apply(self._events.get_nowait())
            except queue.Empty:
                break
        process = self._process
        if self.status.active and process is not None and not process.is_alive():
            # The queue's feeder may still hold the last events of a process that just exited.
            try:
                while True:
                    self._apply(self._events.get(timeout=0.5))
            except queue.Empty:
                pass
            if self.status.active:
                self.status.state = "failed"
                self.status.error = f"the training process exited unexpectedly (exit code {process.exitcode})"

    def _apply(self, event: Any) -> None:
        from textinv import progress

        s = self.status
        if isinstance(event, tuple) and event[0] == "error":
            s.state, s.error = "failed", event[1]
        elif isinstance(event, progress.RunStarted):
            s.state, s.output_dir, s.token = "running", Path(event.output_dir), event.placeholder_token
            s.step = s.start_step = event.start_step
            s.total_steps = event.total_steps
        elif isinstance(event, progress.StepDone):
            s.step, s.total_steps = event.step, event.total_steps
            s.losses.append((event.step, event.loss))
            s.step_seconds.append(event.seconds)
        elif isinstance(event, progress.ValidationDone):
            s.validation.extend(Path(p) for p in event.paths)
        elif isinstance(event, progress.CheckpointSaved):
            s.checkpoint = Path(event.path)
        elif isinstance(event, progress.EmbeddingSaved):
            s.embedding_path = Path(event.path)
        elif isinstance(event, progress.RunFinished):
            s.step, s.embedding_path = event.step, Path(event.embedding_path)
            s.state = "stopped" if event.stopped else "finished"
