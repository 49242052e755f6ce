"""The Concepts tab's library side: listing, export in every format, delete only with confirmation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from textinv.embeddings import read_embedding
from textinv.errors import TextinvError
from textinv.outputs import save_concept
from textinv.ui.concept_list import EXPORTS, delete_concept, export_concept, list_concepts


def _concept(root, name, token, step="5"):
    folder = root / name
    meta = {"textinv.step": step, "textinv.base_model": "toy", "textinv.learnable_property": "object"}
    save_concept(folder, token, [torch.randn(2, 32)], "object", meta)
    for s in (2, 10):
        (folder / "validation" / f"step-{s}").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(folder / "validation" / f"step-{s}" / "00.png")
    return folder


def test_lists_finished_concepts_with_token_family_vectors_model_and_last_validation(tmp_path):
    _concept(tmp_path, "b-star", "<b-star>")
    _concept(tmp_path, "a-cat", "<a-cat>")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "generated").mkdir()
    found = list_concepts(tmp_path)
    assert [c.folder.name for c in found] == ["a-cat", "b-star"]
    first = found[0]
    assert (first.token, first.num_vectors, first.base_model, first.step) == ("<a-cat>", 2, "toy", "5")
    assert [p.parent.name for p in first.validation] == ["step-10"]
    assert list_concepts(tmp_path / "missing") == []


def test_the_toy_model_is_listed_by_name_not_install_path(tmp_path):
    from textinv.models import resolve_model_source

    folder = _concept(tmp_path, "star", "<star>")
    meta = {"textinv.base_model": resolve_model_source(None).path_or_id}
    save_concept(folder, "<star>", [torch.randn(1, 32)], "object", meta)
    assert list_concepts(tmp_path)[0].base_model == "textinv-toy"


@pytest.mark.parametrize("label", list(EXPORTS))
def test_export_writes_a_file_that_reads_back_as_the_same_vectors(tmp_path, label):
    folder = _concept(tmp_path / "root", "star", "<star>")
    path = export_concept(tmp_path / "root", "star", label, tmp_path / "out")
    assert path.suffix == EXPORTS[label][1] and path.stem == "star"
    original = read_embedding(folder / "learned_embeds.safetensors")
    assert torch.equal(read_embedding(path).vectors[0], original.vectors[0])


def test_delete_needs_the_typed_name_and_stays_under_the_root(tmp_path):
    root = tmp_path / "root"
    folder = _concept(root, "star", "<star>")
    with pytest.raises(TextinvError, match="type its name"):
        delete_concept(root, "star", "yes")
    assert folder.is_dir()
    outside = _concept(tmp_path, "other", "<o>")
    with pytest.raises(TextinvError, match="no concept named"):
        delete_concept(root, "../other", "../other")
    assert outside.is_dir()
    delete_concept(root, "star", "star")
    assert not folder.exists()
