"""Every snippet of a trained concept's model card runs as written, pasted where the card says."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, card_snippets, run_subprocess

pytestmark = pytest.mark.slow


def test_the_toy_models_card_snippets_run_as_pasted(tmp_path):
    out = tmp_path / "star-concept"
    trained = run_subprocess(
        ["train", "--train_data_dir", REPO / "examples" / "orange-star", "--placeholder_token", "<my-star>",
         "--initializer_token", "star", "--max_train_steps", "2", "--train_batch_size", "1", "--seed", "0",
         "--output_dir", out],
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card and str(REPO) not in card
    snippets = card_snippets(card)
    assert [lang for lang, _ in snippets] == ["python", "bash"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for lang, code in snippets:
        if lang == "python":
            ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        else:
            (line,) = code.splitlines()  # one command for a local concept (a pushed one adds `hf download`)
            args = shlex.split(line)
            assert args[0] == "textinv"
            ran = run_subprocess(args[1:], cwd=tmp_path)
        assert ran.returncode == 0, f"{code}\n{ran.stderr[-2000:]}"
    assert list(tmp_path.glob("*.png")), "the python snippet saves its image"
    assert list((tmp_path / "outputs").rglob("*.png")), "textinv generate writes its images"


def test_the_sdxl_toy_twins_card_names_it_and_its_snippets_run_as_pasted(tmp_path):
    """Trained on `$(textinv toy path --family sdxl)`: the card says how to find the twin, never its path."""
    from textinv.models import toy_model_dir

    out = tmp_path / "star-concept"
    trained = run_subprocess(
        ["train", "--pretrained_model_name_or_path", toy_model_dir("sdxl"), "--train_data_dir",
         REPO / "examples" / "orange-star", "--placeholder_token", "<my-star>", "--initializer_token", "star",
         "--max_train_steps", "2", "--train_batch_size", "1", "--seed", "0", "--output_dir", out],
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card and str(REPO) not in card
    assert "toy_model_dir('sdxl')" in card and '--model "$(textinv toy path --family sdxl)"' in card
    # A shell runs the bash line ($(...) included), with this interpreter's `textinv` first on its PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": path}
    for lang, code in card_snippets(card):
        command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-c", code]
        ran = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert ran.returncode == 0, f"{code}\n{ran.stderr[-2000:]}"
    assert list(tmp_path.glob("*.png")), "the python snippet saves its image"
    assert list((tmp_path / "outputs").rglob("*.png")), "textinv generate writes its images"
