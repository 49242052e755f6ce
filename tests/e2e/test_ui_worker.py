"""The UI's training worker process: progress events, Stop keeps a checkpoint, Resume, crashes as one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ui_server import EXAMPLE

from textinv.checkpoint import list_checkpoints
from textinv.errors import TextinvError
from textinv.ui.worker import TrainingWorker

pytestmark = pytest.mark.slow


def _given(out: Path, **extra) -> dict:
    return {
        "train_data_dir": str(EXAMPLE),
        "placeholder_token": "<w-star>",
        "initializer_token": "star",
        "output_dir": str(out),
        "train_batch_size": 2,
        "seed": 0,
        **extra,
    }


def _exits_hard(given, events, stop_event) -> None:
    os._exit(3)


def _waits_for_stop(given, events, stop_event) -> None:
    from textinv.progress import RunFinished, RunStarted

    events.put(RunStarted(Path(given["output_dir"]), 0, 10, given["placeholder_token"]))
    stop_event.wait(120)
    events.put(RunFinished(0, Path(given["output_dir"]) / "x", stopped=True))


def test_progress_stop_keeps_a_checkpoint_and_resume_finishes(tmp_path):
    worker = TrainingWorker()
    given = _given(tmp_path / "run", max_train_steps=12)
    worker.start(given)
    while worker.poll().active and worker.status.step < 2:
        worker.wait(0.2, interval=0.05)
    assert worker.status.state == "running" and worker.status.total_steps == 12
    worker.stop()
    status = worker.wait(120)
    assert status.state == "stopped", status.error
    stopped_at = status.step
    assert 2 <= stopped_at < 12 and [s for s, _ in status.losses] == list(range(1, stopped_at + 1))
    assert list_checkpoints(tmp_path / "run")[-1].name == f"checkpoint-{stopped_at}"
    worker.start({**given, "resume_from_checkpoint": "latest"})
    status = worker.wait(300)
    assert status.state == "finished", status.error
    assert status.start_step == stopped_at and status.step == 12
    assert status.embedding_path == tmp_path / "run" / "learned_embeds.safetensors" and status.eta_seconds == 0


def test_a_training_error_is_its_one_line_message(tmp_path):
    worker = TrainingWorker()
    worker.start(_given(tmp_path / "run", initializer_token="zxq", max_train_steps=2))
    status = worker.wait(180)
    assert status.state == "failed"
    assert "--initializer_token 'zxq' is 2 tokens" in status.error and "\n" not in status.error


def test_a_worker_that_dies_is_reported_not_waited_for(tmp_path):
    worker = TrainingWorker(target=_exits_hard)
    worker.start(_given(tmp_path / "run"))
    status = worker.wait(60)
    assert status.state == "failed" and "exited unexpectedly (exit code 3)" in status.error


def test_one_training_at_a_time(tmp_path):
    worker = TrainingWorker(target=_waits_for_stop)
    worker.start(_given(tmp_path / "a"))
    worker.wait(5)  # until RunStarted arrives the run is "starting": busy too
    with pytest.raises(TextinvError, match=r"a training \(<w-star>\) is already running"):
        worker.start(_given(tmp_path / "b"))
    worker.stop()
    assert worker.wait(60).state == "stopped"
    worker.start(_given(tmp_path / "b"))  # free again
    worker.stop()
    assert worker.wait(60).state == "stopped"
