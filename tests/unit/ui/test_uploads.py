"""Uploads become a fresh run folder: readable images and captions kept, the rest named, old runs untouched."""

from __future__ import annotations

import pytest
from PIL import Image

from textinv.errors import TextinvError
from textinv.ui.uploads import new_run_dir, slug, sort_uploads, stage_run_inputs


def _files(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    Image.new("RGBA", (8, 8), "blue").save(tmp_path / "b.webp")
    (tmp_path / "a.txt").write_text("a red square", encoding="utf-8")
    (tmp_path / "notes.png").write_bytes(b"not really a png")
    return [tmp_path / n for n in ("a.png", "b.webp", "a.txt", "notes.png")]


def test_uploads_are_sorted_into_images_captions_and_named_unreadable_files(tmp_path):
    found = sort_uploads(_files(tmp_path))
    assert [p.name for p in found.images] == ["a.png", "b.webp"]
    assert [p.name for p in found.captions] == ["a.txt"]
    assert found.unreadable == ["notes.png"]
    assert "skipped, not readable images: notes.png" in found.summary()


def test_run_folders_never_reuse_an_existing_one(tmp_path):
    assert slug("<my star>") == "my-star" and slug("<>") == "concept"
    first = new_run_dir(tmp_path, "<my-star>")
    first.mkdir()
    assert first.name == "my-star" and new_run_dir(tmp_path, "<my-star>").name == "my-star-2"


def test_staging_copies_images_captions_and_template(tmp_path):
    uploads = sort_uploads(_files(tmp_path))
    template = tmp_path / "t.txt"
    template.write_text("a photo of [name], [filewords]\n", encoding="utf-8")
    images_dir, staged_template = stage_run_inputs(uploads, tmp_path / "run", template)
    assert sorted(p.name for p in images_dir.iterdir()) == ["a.png", "a.txt", "b.webp"]
    assert staged_template.read_text(encoding="utf-8") == template.read_text(encoding="utf-8")


def test_no_readable_image_is_a_one_line_error_naming_the_skipped(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"junk")
    with pytest.raises(TextinvError, match=r"no readable image uploaded \(skipped: x\.jpg\)"):
        stage_run_inputs(sort_uploads([tmp_path / "x.jpg"]), tmp_path / "run")
