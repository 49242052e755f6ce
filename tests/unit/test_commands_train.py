"""`textinv train`'s command-line side: where its settings came from, and refusals before any work."""

from __future__ import annotations

import logging

from helpers import REPO, run_cli

import textinv.commands.train as train_command
import textinv.train


def test_the_start_up_summary_names_the_values_the_models_textinv_json_filled(monkeypatch, caplog):
    seen = []
    monkeypatch.setattr(textinv.train, "train", lambda cfg, **_: seen.append(cfg) or _Result())
    argv = ["train", "--data", REPO / "examples" / "orange-star", "--token", "<s>", "--init", "star", "--lr", "0.01"]
    with caplog.at_level(logging.INFO, logger="textinv"):
        assert run_cli(argv) == 0
    (line,) = [r.getMessage() for r in caplog.records if "textinv.json" in r.getMessage()]
    assert "--max_train_steps 600" in line and "--train_batch_size 8" in line and "--report_to none" in line
    assert "--learning_rate" not in line  # the user's flag, not the file's
    assert seen[0].learning_rate == 0.01 and seen[0].max_train_steps == 600


def test_fp16_on_a_cpu_run_is_warned_about_in_one_line(monkeypatch, caplog):
    monkeypatch.setattr(textinv.train, "train", lambda cfg, **_: _Result())
    monkeypatch.setattr(train_command, "_device_type", lambda: "cpu")
    argv = ["train", "--data", REPO / "examples" / "orange-star", "--token", "<s>", "--init", "star"]
    with caplog.at_level(logging.INFO, logger="textinv"):
        assert run_cli([*argv, "--mixed_precision", "fp16"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fp16 on the CPU" in warnings[0] and "bf16" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="textinv"):
        assert run_cli([*argv, "--mixed_precision", "bf16"]) == 0
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


class _Result:
    embedding_path, global_step, final_loss, stopped = "x", 1, 0.5, False
