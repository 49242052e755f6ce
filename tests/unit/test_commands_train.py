"""`textinv train`'s command-line side: where its settings came from, and refusals before any work."""

from __future__ import annotations

import logging

from helpers import REPO, run_cli

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


class _Result:
    embedding_path, global_step, final_loss, stopped = "x", 1, 0.5, False
