"""`textinv train --template_file` with IMAGE.txt captions, from the command line."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, learned, run_cli, train_args

from textinv.data import OBJECT_TEMPLATES

pytestmark = pytest.mark.slow

# Until train.py builds its prompts with data.training_prompts, --template_file is validated but not used.
# Strict: once it is wired this xpasses and fails, so the marker cannot outlive the gap.


def _captioned(concept_dir: Path) -> Path:
    for i, image in enumerate(sorted(concept_dir.glob("*.png"))):
        image.with_suffix(".txt").write_text(f"on a {['red', 'blue', 'green', 'grey'][i]} table", encoding="utf-8")
    return concept_dir


def test_template_file_and_captions_change_what_is_learned(sd1_model, concept_dir, tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a [name] [filewords]\n", encoding="utf-8")
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "plain")) == 0
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "tmpl", "--template_file", templates)) == 0
    _captioned(concept_dir)
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "capt", "--template_file", templates)) == 0
    plain, tmpl, capt = (learned(tmp_path / n)["<cat-toy>"] for n in ("plain", "tmpl", "capt"))
    assert not torch.equal(plain, tmpl) and not torch.equal(tmpl, capt)


def test_captions_follow_the_default_templates_unless_ignored(sd1_model, concept_dir, tmp_path, caplog):
    templates = tmp_path / "templates.txt"
    bare = [t.format("[name]") for t in OBJECT_TEMPLATES]
    templates.write_text("".join(f"{t}\n" for t in bare) + "".join(f"{t} [filewords]\n" for t in bare))
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "plain")) == 0
    _captioned(concept_dir)
    with caplog.at_level(logging.INFO, logger="textinv"):
        assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "capt")) == 0
    assert "using the captions beside 4 of 4 images" in caplog.text and "--ignore_captions" in caplog.text
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "ignored", "--ignore_captions")) == 0
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "tmpl", "--template_file", templates)) == 0
    plain, capt, ignored, tmpl = (learned(tmp_path / n)["<cat-toy>"] for n in ("plain", "capt", "ignored", "tmpl"))
    assert torch.equal(plain, ignored)  # --ignore_captions trains as diffusers' script does
    assert not torch.equal(plain, capt)
    assert torch.equal(capt, tmpl)  # the same as a template file of every diffusers template, bare and with [filewords]


def test_template_without_name_is_a_one_line_error_before_training(sd1_model, concept_dir, tmp_path, capsys):
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a [name]\na photo of a cat, [filewords]\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_cli(train_args(sd1_model, concept_dir, out, "--template_file", templates)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2" in err and "has no [name]" in err
    assert not out.exists()  # refused before anything was written


def test_readme_captions_snippet_runs(tmp_path):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    script = text.split("<!-- captions-snippet -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert "--output_dir star-captions" in script
    script = script.replace("--output_dir star-captions", "--output_dir star-captions --max_train_steps 2")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euc", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "stars" / "img_01.txt").read_text().strip() == "on a blue background"
    assert (tmp_path / "star-captions" / "learned_embeds.safetensors").is_file()
