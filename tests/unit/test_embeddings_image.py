"""AUTOMATIC1111 embedding images we write: A1111's reading of the `sd-ti-embedding` chunk, and ours."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from textinv.embeddings import read_embedding, save_diffusers_embedding
from textinv.errors import TextinvError


def a1111_read_image(path) -> tuple[str, torch.Tensor]:
    """A1111's loader for an embedding image (modules/textual_inversion): the text chunk, its `name`."""
    image = Image.open(path)

    def hook(d):
        return torch.from_numpy(np.array(d["TORCHTENSOR"])) if "TORCHTENSOR" in d else d

    data = json.loads(base64.b64decode(image.text["sd-ti-embedding"]), object_hook=hook)
    (vec,) = data["string_to_param"].values()
    return data.get("name", path.stem), vec


def _trained_folder(tmp_path, vectors):
    folder = tmp_path / "out"
    meta = {"textinv.step": "600", "textinv.base_model": "textinv-toy"}
    save_diffusers_embedding(folder / "learned_embeds.safetensors", "<my-star>", vectors, metadata=meta)
    return folder


def test_convert_to_an_a1111_png_that_a1111_and_textinv_read_back_exactly(tmp_path, capsys):
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    folder = _trained_folder(tmp_path, vectors)
    assert run_cli(["convert", folder, tmp_path / "star.png", "--to", "a1111"]) == 0
    assert "wrote" in capsys.readouterr().out
    name, vec = a1111_read_image(tmp_path / "star.png")
    assert name == "<my-star>" and torch.equal(vec.to(torch.float32), vectors)
    emb = read_embedding(tmp_path / "star.png")
    assert (emb.token, emb.format, emb.metadata["step"]) == ("<my-star>", "a1111-image", "600")
    assert torch.equal(emb.vectors[0], vectors) and emb.vectors[0].dtype == torch.float32
    assert Image.open(tmp_path / "star.png").size == (256, 256)


def test_an_a1111_png_needs_to_a1111_and_an_sd1_or_sd2_concept(tmp_path, capsys):
    folder = _trained_folder(tmp_path, torch.zeros(1, 32))
    assert run_cli(["convert", folder, tmp_path / "star.png", "--to", "diffusers"]) == 2
    assert ".png with --to a1111" in capsys.readouterr().err
    from textinv.embeddings import Embedding, write_embedding

    sdxl = Embedding("<x>", (torch.zeros(1, 768), torch.zeros(1, 1280)), "sdxl")
    with pytest.raises(TextinvError, match="SDXL"):
        write_embedding(tmp_path / "x.png", sdxl, "a1111")
