"""The fidelity gap on the shipped toy model, through the CLI a user runs (about a minute on 2 cores).

`textinv train` with only the three required flags learns the bundled orange star: "a photo of a
<my-star>" draws orange stars, while the initializer word alone ("a photo of a star") knows the shape
but not the colour. Judged by the shipped judge, as `textinv toy score` does.
"""

from __future__ import annotations

from helpers import REPO, run_cli

from textinv.toy import judge

N = 32


def test_textual_inversion_learns_the_bundled_object_concept(tmp_path):
    emb = tmp_path / "embedding"
    train = ["train", "--train_data_dir", REPO / "examples" / "orange-star", "--placeholder_token", "<my-star>"]
    assert run_cli([*train, "--initializer_token", "star", "--seed", "0", "--output_dir", emb]) == 0
    generate = ["generate", "-n", N, "--quiet"]
    assert run_cli([*generate, "a photo of a <my-star>", "--out", tmp_path / "learned", "--concept", emb]) == 0
    assert run_cli([*generate, "a photo of a star", "--out", tmp_path / "initializer"]) == 0
    learned = judge.score_folder(tmp_path / "learned", "orange star")
    initializer = judge.score_folder(tmp_path / "initializer", "orange star")
    assert learned["n"] == initializer["n"] == N
    # Issue 3's targets: >= 80 % learned, <= 40 % for the initializer. Measured at the shipped settings
    # (Min-SNR weighting, bench/toy_targets.py, README "Toy model"): 100 % at training seeds 0, 1 and 2
    # against 6 %. The seed is pinned so the suite is repeatable.
    assert learned["match"] >= 0.8, learned
    assert initializer["match"] <= 0.4, initializer
    assert learned["match"] - initializer["match"] >= 0.4, (learned, initializer)
