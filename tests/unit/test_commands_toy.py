"""`textinv toy path` and `textinv toy score --numbers` as a user runs them."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from textinv.models import TOY_MODEL_DIR
from textinv.toy import world


def test_toy_path_prints_the_embedded_model_folder(capsys):
    assert run_cli(["toy", "path"]) == 0 and run_cli(["toy", "path", "--family", "sd1"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(TOY_MODEL_DIR)] * 2


def test_toy_path_family_sdxl_prints_the_twin_whose_settings_train_uses(capsys):
    """`textinv train --pretrained_model_name_or_path $(textinv toy path --family sdxl)` uses the twin's settings."""
    from textinv.config import config_for_model
    from textinv.toy.build import RECOMMENDED_SETTINGS

    assert run_cli(["toy", "path", "--family", "sdxl"]) == 0
    (printed,) = capsys.readouterr().out.splitlines()
    assert printed == str(TOY_MODEL_DIR.parent / "model-sdxl")
    cfg, from_model = config_for_model({"pretrained_model_name_or_path": printed, "max_train_steps": 7})
    assert (cfg.resolution, cfg.max_train_steps, cfg.snr_gamma) == (32, 7, 5.0)
    assert from_model["learning_rate"] == RECOMMENDED_SETTINGS["train"]["learning_rate"]
    assert "max_train_steps" not in from_model  # the user's flag wins
    assert run_cli(["toy", "path", "--family", "sd3"]) == 2


def test_toy_score_numbers_scores_one_calls_images_alone(tmp_path, capsys):
    shots = tmp_path / "shots"
    shots.mkdir()
    for first, concept in ((0, "orange star"), (2, "blue circle")):
        drawn = world.write_concept_images(concept, tmp_path / concept, 2, seed=first)
        for i, path in enumerate(drawn):
            path.rename(shots / f"{first + i:04d}-seed{i}.png")
    scores = {}
    for numbers in ("0-1", "2-3"):
        assert run_cli(["toy", "score", shots, "--expect", "orange star", "--numbers", numbers, "--json"]) == 0
        scores[numbers] = json.loads(capsys.readouterr().out)
    assert (scores["0-1"]["n"], scores["0-1"]["match"]) == (2, 1.0)
    assert (scores["2-3"]["n"], scores["2-3"]["match"]) == (2, 0.0)


@pytest.mark.parametrize("bad", ["x-3", "5-2"])
def test_toy_score_numbers_refuses_a_bad_range_in_one_line(tmp_path, capsys, bad):
    assert run_cli(["toy", "score", tmp_path, "--expect", "star", "--numbers", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert "--numbers" in err and "\n" not in err
