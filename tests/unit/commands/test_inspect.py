"""`textinv inspect`: facts about an embedding, as text and as one JSON object."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from textinv.cli import main
from textinv.embeddings import save_a1111_embedding, save_diffusers_embedding


def _vec(n, dim, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * 0.3


def _inspect_json(capsys, *argv) -> dict:
    assert main(["inspect", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("dim,family", [(768, "sd1"), (1024, "sd2")])
def test_json_describes_sd1_and_sd2_files(tmp_path, capsys, dim, family):
    vec = _vec(3, dim).half()
    path = save_diffusers_embedding(
        tmp_path / "e.safetensors", "<tok>", vec, metadata={"step": "500", "learning_rate": "0.0005"}
    )
    r = _inspect_json(capsys, path)
    assert (r["format"], r["tokens"], r["num_vectors"], r["dim"], r["dtype"], r["family"]) == (
        "diffusers",
        ["<tok>"],
        3,
        dim,
        "float16",
        family,
    )
    assert r["prompt_tokens"] == ["<tok>", "<tok>_1", "<tok>_2"]
    assert r["norms"] == pytest.approx(vec.float().norm(dim=1).tolist(), abs=1e-5)
    assert r["metadata"] == {"step": "500", "learning_rate": "0.0005"}


def test_json_describes_sdxl_pairs(tmp_path, capsys):
    save_file({"clip_l": _vec(2, 768), "clip_g": _vec(2, 1280)}, str(tmp_path / "xl.safetensors"))
    r = _inspect_json(capsys, tmp_path / "xl.safetensors")
    assert (r["format"], r["dim"], r["family"], r["num_vectors"]) == ("sdxl", [768, 1280], "sdxl", 2)
    assert set(r["norms"]) == {"clip_l", "clip_g"}


def test_a1111_training_metadata_is_shown(tmp_path, capsys):
    path = save_a1111_embedding(
        tmp_path / "cat.pt", "cat", _vec(1, 768), step=1500, sd_checkpoint="e1441589", sd_checkpoint_name="v1-5"
    )
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "format:      a1111" in text and "family:      sd1" in text and "1 x 768" in text
    assert "meta step: 1500" in text and "meta sd_checkpoint_name: v1-5" in text


def test_nearest_vocabulary_tokens_with_model(sd1_model, tmp_path, capsys):
    from safetensors import safe_open
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(sd1_model / "tokenizer")
    with safe_open(str(next((sd1_model / "text_encoder").glob("*.safetensors"))), framework="pt") as f:
        # transformers 5 saves without the text_model. prefix; older versions with it
        weight = f.get_tensor(next(k for k in f.keys() if k.endswith("embeddings.token_embedding.weight")))
    ids = tokenizer.convert_tokens_to_ids(["dog</w>", "castle</w>"])
    path = save_diffusers_embedding(tmp_path / "e.safetensors", "<pet>", weight[ids] * 2.0)
    r = _inspect_json(capsys, path, "--model", sd1_model, "--top-k", "3")
    assert [row[0]["token"] for row in r["nearest_tokens"]] == ["dog", "castle"]
    assert r["nearest_tokens"][0][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert len(r["nearest_tokens"][1]) == 3
    assert r["model_mean_token_norm"] > 0
    assert main(["inspect", str(path), "--model", str(sd1_model)]) == 0
    assert "nearest[0]: dog (1.00)" in capsys.readouterr().out


def test_wrong_family_model_is_refused(sd1_model, tmp_path, capsys):
    path = save_diffusers_embedding(tmp_path / "e.safetensors", "<t>", _vec(1, 768))
    assert main(["inspect", str(path), "--model", str(sd1_model)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sd1 (768)" in err and "custom-32 (32)" in err and "\n" not in err
