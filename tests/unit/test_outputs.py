"""The final files of a run: what they say about the base model must not reveal the machine."""

from __future__ import annotations

import torch
from safetensors import safe_open

from textinv.outputs import FINAL_EMBEDDING, save_concept


def test_the_saved_embedding_names_the_base_model_not_its_local_path(tmp_path):
    model = tmp_path / "home" / "someone" / "models" / "my-sd15"
    model.mkdir(parents=True)
    save_concept(tmp_path / "out", "<t>", torch.zeros(1, 8), "object", {"textinv.base_model": str(model)})
    with safe_open(str(tmp_path / "out" / FINAL_EMBEDDING), framework="pt") as f:
        assert f.metadata()["textinv.base_model"] == "my-sd15"
    assert b"someone" not in (tmp_path / "out" / FINAL_EMBEDDING).read_bytes()
