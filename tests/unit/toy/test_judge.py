"""The judge: accurate on fresh images of the world, "unclear" on images that show no clear concept,
and `textinv toy score` reports its rates without counting unclear images."""

from __future__ import annotations

import json

import pytest

from textinv.cli import main
from textinv.errors import TextinvError
from textinv.toy import judge, unclear, world


@pytest.fixture(scope="module")
def shipped_judge() -> judge.Judge:
    return judge.load_judge()


def test_shipped_judge_is_at_least_98_percent_accurate_on_fresh_images(shipped_judge):
    acc = judge.evaluate(shipped_judge, n=600, seed=2024)  # a seed no training image came from
    assert acc["all"] >= 0.98 and acc["unclear"] <= 0.01, acc


@pytest.mark.parametrize("kind", unclear.KINDS)
def test_shipped_judge_says_unclear_to_unclear_images_and_is_not_flattered(shipped_judge, kind):
    acc = judge.evaluate_unclear(shipped_judge, kind, n=200, seed=2025)  # held out from training too
    assert acc["flagged"] >= 0.8 and acc["counted"] <= 0.1 and acc["background"] >= 0.95, acc


def test_shipped_judge_carries_its_measured_accuracy():
    stored = judge.shipped_accuracy()
    assert set(stored) == {"clean", "clean_augmented", *unclear.KINDS}
    assert stored["clean"]["all"] >= 0.98 and all(stored[k]["flagged"] >= 0.85 for k in unclear.KINDS)


def test_unclear_readings_never_count_as_a_match(monkeypatch):
    readings = [
        {"shape": "star", "colour": "orange", "background": "white"},
        {"shape": "unclear", "colour": "orange", "background": "white"},
        {"shape": "star", "colour": "unclear", "background": "white"},
        {"shape": "star", "colour": "red", "background": "blue"},
    ]
    monkeypatch.setattr(judge, "classify", lambda images, _judge=None: readings)
    coloured = judge.score([None] * 4, "orange star", "white")
    assert coloured == {"match": 0.25, "shape": 0.75, "colour": 0.5, "background": 0.75, "unclear": 0.5, "n": 4}
    # Even with no colour asked for, a star whose colour is unclear is not a clear star.
    assert judge.score([None] * 4, "star")["match"] == 0.5


def test_blurred_and_blended_stars_do_not_score_as_orange_stars(tmp_path):
    stars = [world.render(s) for s in world.scenes(4, seed=9, shape="star", colour="orange")]
    spoiled = [item.image for kind in ("blurred", "blend", "merged") for item in unclear.images(kind, 4, seed=9)]
    result = judge.score(stars + spoiled, "orange star")
    assert result["match"] == 4 / 16 and result["unclear"] >= 10 / 16, result


def test_judge_reads_blurred_noisy_images_too(shipped_judge):
    acc = judge.evaluate(shipped_judge, n=300, seed=77, augment=True)
    assert acc["all"] >= 0.95, acc


def test_score_json_has_match_rates_and_background_only_when_asked(tmp_path, capsys):
    folder = tmp_path / "hearts"
    world.write_concept_images("green heart", folder, 6, background="white", seed=3)
    assert main(["toy", "score", str(folder), "--expect", "green heart", "--background", "white", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"match", "shape", "colour", "background", "unclear", "n"}
    assert result["n"] == 6 and result["match"] == 1.0 and result["background"] == 1.0
    assert main(["toy", "score", str(folder), "--expect", "green heart", "--json"]) == 0
    assert "background" not in json.loads(capsys.readouterr().out)


def test_score_of_the_wrong_concept_is_low(tmp_path):
    folder = tmp_path / "circles"
    world.write_concept_images("red circle", folder, 6, seed=4)
    result = judge.score_folder(folder, "green heart", background="blue")
    assert result["match"] == 0.0 and result["shape"] == 0.0 and result["colour"] == 0.0


def test_score_text_output_and_errors(tmp_path, capsys):
    folder = tmp_path / "stars"
    world.write_concept_images("orange star", folder, 4, seed=5)
    assert main(["toy", "score", str(folder), "--expect", "orange star"]) == 0
    assert "100% of 4 images show an orange star" in capsys.readouterr().out
    assert main(["toy", "score", str(folder), "--expect", "Orange star"]) == 0
    assert "100% of 4 images show an Orange star" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["toy", "score", str(tmp_path / "empty"), "--expect", "orange star"]) == 2
    assert "no images" in capsys.readouterr().err
    with pytest.raises(TextinvError, match="unknown background"):
        judge.score_folder(folder, "orange star", background="plaid")


def test_training_a_judge_is_deterministic_from_its_seed():
    a = judge.train_judge(n_images=256, epochs=1, seed=5, n_unclear=16)
    b = judge.train_judge(n_images=256, epochs=1, seed=5, n_unclear=16)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert x.equal(y), name
