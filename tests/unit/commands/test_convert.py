"""`textinv convert IN OUT --to FORMAT` as a user runs it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from textinv.cli import main
from textinv.embeddings import read_embedding, save_diffusers_embedding


def _vec(n=2, dim=768):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(0))


def _training_folder(tmp_path):
    folder = tmp_path / "out"
    save_diffusers_embedding(folder / "learned_embeds.safetensors", "<cat-toy>", _vec(), metadata={"step": "3000"})
    (folder / "token_identifier.txt").write_text("<cat-toy>")
    return folder


def test_training_folder_to_a1111_pt_and_back(tmp_path, capsys):
    folder = _training_folder(tmp_path)
    assert main(["convert", str(folder), str(tmp_path / "cat-toy.pt"), "--to", "a1111"]) == 0
    out = capsys.readouterr().out
    assert "token <cat-toy>, 2x768" in out and "write cat-toy in prompts" in out
    data = torch.load(tmp_path / "cat-toy.pt", weights_only=True)
    assert data["name"] == "<cat-toy>" and data["step"] == 3000
    assert main(["convert", str(tmp_path / "cat-toy.pt"), str(tmp_path / "back.safetensors"), "--to", "diffusers"]) == 0
    back = load_file(str(tmp_path / "back.safetensors"))
    assert list(back) == ["<cat-toy>"] and torch.equal(back["<cat-toy>"], _vec())


def test_token_rename(tmp_path):
    folder = _training_folder(tmp_path)
    out = tmp_path / "renamed.bin"
    assert main(["convert", str(folder), str(out), "--to", "diffusers", "--token", "<toy2>"]) == 0
    assert list(torch.load(out, weights_only=True)) == ["<toy2>"]
    assert read_embedding(out).token == "<toy2>"


@pytest.mark.parametrize(
    "out_name,extra,expected",
    [
        ("x.txt", [], "must end in .safetensors, .bin or .pt"),
        ("exists.pt", [], "already exists"),
    ],
)
def test_bad_output_is_one_line_exit_2(tmp_path, capsys, out_name, extra, expected):
    folder = _training_folder(tmp_path)
    (tmp_path / "exists.pt").write_bytes(b"keep me")
    assert main(["convert", str(folder), str(tmp_path / out_name), "--to", "a1111", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err
    assert (tmp_path / "exists.pt").read_bytes() == b"keep me"


def test_force_overwrites(tmp_path):
    folder = _training_folder(tmp_path)
    (tmp_path / "exists.pt").write_bytes(b"old")
    assert main(["convert", str(folder), str(tmp_path / "exists.pt"), "--to", "a1111", "--force"]) == 0
    assert torch.equal(read_embedding(tmp_path / "exists.pt").vectors[0], _vec())


def test_trainer_metadata_fills_a1111_step_and_checkpoint_name(tmp_path):
    folder = tmp_path / "run"
    meta = {"textinv.step": "750", "textinv.base_model": "/models/sd-v1-5", "textinv.token": "<t>"}
    save_diffusers_embedding(folder / "learned_embeds.safetensors", "<t>", _vec(), metadata=meta)
    assert main(["convert", str(folder), str(tmp_path / "t.pt"), "--to", "a1111"]) == 0
    data = torch.load(tmp_path / "t.pt", weights_only=True)
    assert (data["step"], data["sd_checkpoint_name"]) == (750, "sd-v1-5")
    assert read_embedding(tmp_path / "t.pt").metadata["textinv.base_model"] == "sd-v1-5"  # a name, not a path
