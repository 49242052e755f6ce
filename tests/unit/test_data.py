"""Prompt templates and captions: `--template_file`, IMAGE.txt captions and the per-image prompt table."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from textinv.config import TrainConfig
from textinv.data import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    caption_path,
    load_concept_images,
    load_template_file,
    prompt_table,
    read_captions,
    tokenize_prompt_table,
    training_prompts,
)
from textinv.errors import TextinvError


def _images(folder, names=("a.png", "b.png", "c.png")):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(folder / name)
    return [folder / n for n in names]


def test_without_template_file_every_image_gets_diffusers_templates_filled_as_before(tmp_path):
    paths = _images(tmp_path / "imgs")
    table = training_prompts(paths, "<t> <t>_1", "object", None)
    expected = [t.format("<t> <t>_1") for t in OBJECT_TEMPLATES]
    assert table == [expected] * 3
    assert prompt_table("<s>", 2, "style")[1] == [t.format("<s>") for t in STYLE_TEMPLATES]


def test_template_file_fills_name_and_each_images_caption(tmp_path):
    paths = _images(tmp_path / "imgs")
    caption_path(paths[0]).write_text("a red star\non grass\n", encoding="utf-8")
    caption_path(paths[2]).write_text("  a blue one ", encoding="utf-8")
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of [name], [filewords]\n\n[filewords] in the style of [name]\n", encoding="utf-8")
    table = training_prompts(paths, "<tok>", "object", str(templates))
    assert table == [
        ["a photo of <tok>, a red star on grass", "a red star on grass in the style of <tok>"],
        ["a photo of <tok>", "in the style of <tok>"],  # no caption: empty [filewords], no dangling comma
        ["a photo of <tok>, a blue one", "a blue one in the style of <tok>"],
    ]


def test_template_file_braces_are_literal_text(tmp_path):
    templates = tmp_path / "t.txt"
    templates.write_text("a {curly} photo of [name]\n", encoding="utf-8")
    assert prompt_table("<x>", 1, templates=load_template_file(templates)) == [["a {curly} photo of <x>"]]


def test_template_file_with_a_line_without_name_is_one_line_error(tmp_path):
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of [name]\na photo of a cat\n", encoding="utf-8")
    with pytest.raises(TextinvError, match=r"line 2 \('a photo of a cat'\) has no \[name\]") as info:
        load_template_file(templates)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", ["", "\n  \n\t\n"])
def test_empty_template_file_is_an_error(tmp_path, content):
    templates = tmp_path / "t.txt"
    templates.write_text(content, encoding="utf-8")
    with pytest.raises(TextinvError, match="is empty; write one prompt template per line"):
        load_template_file(templates)


def test_missing_or_binary_template_file_is_an_error(tmp_path):
    with pytest.raises(TextinvError, match="does not exist"):
        load_template_file(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa[name]\x80")
    with pytest.raises(TextinvError, match="not readable as UTF-8 text"):
        load_template_file(bad)
    with pytest.raises(TextinvError, match="not readable as UTF-8 text"):
        load_template_file(tmp_path)  # a folder


def test_unreadable_caption_is_a_one_line_error_naming_it(tmp_path):
    paths = _images(tmp_path / "imgs")
    caption_path(paths[1]).write_bytes(b"\xff\xfe\x00\xd8 not utf-8 \x80")
    with pytest.raises(TextinvError, match=r"caption .*b\.txt is not readable as UTF-8") as info:
        read_captions(paths)
    assert "\n" not in str(info.value)
    caption_path(paths[1]).unlink()
    caption_path(paths[1]).mkdir()  # a folder named like a caption
    with pytest.raises(TextinvError, match=r"b\.txt is not readable"):
        read_captions(paths)


def test_captions_in_the_image_folder_are_not_images_and_not_warned_about(tmp_path, caplog):
    paths = _images(tmp_path / "imgs")
    caption_path(paths[0]).write_text("x", encoding="utf-8")
    (tmp_path / "imgs" / "junk.dat").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        images, used = load_concept_images(tmp_path / "imgs")
    assert used == paths
    assert "junk.dat" in caplog.text and "a.txt" not in caplog.text
    only_captions = tmp_path / "only"
    only_captions.mkdir()
    (only_captions / "a.txt").write_text("x")
    with pytest.raises(TextinvError, match=r"no readable image .*a\.txt"):
        load_concept_images(only_captions)


def test_filewords_without_captions_warns(tmp_path, caplog):
    paths = _images(tmp_path / "imgs")
    templates = tmp_path / "t.txt"
    templates.write_text("[name], [filewords]\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        training_prompts(paths, "<t>", "object", str(templates))
    assert "no image has a caption file" in caplog.text


def test_config_validate_checks_the_template_file(tmp_path, concept_dir):
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of a dog\n", encoding="utf-8")
    cfg = TrainConfig(
        train_data_dir=str(concept_dir), placeholder_token="<t>", initializer_token="dog", template_file=str(templates)
    )
    with pytest.raises(TextinvError, match=r"has no \[name\]"):
        cfg.validate()
    templates.write_text("a photo of a [name]\n", encoding="utf-8")
    cfg.validate()


def _clip_tokenize():
    from conftest import TOKENIZER_DIR
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)

    def tokenize(texts):
        return (tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids,)

    return tokenize


def test_tokenized_table_with_captions_is_images_by_templates_and_matches_per_prompt_tokenization():
    tokenize = _clip_tokenize()
    table = prompt_table("cat", 2, templates=["a [name] [filewords]", "[name]"], captions=["red", ""])
    (ids,) = tokenize_prompt_table(tokenize, table)
    assert ids.shape == (2, 2, 77)
    for i in range(2):
        for j in range(2):
            assert ids[i, j].tolist() == tokenize([table[i][j]])[0][0].tolist()
    assert ids[0, 0].tolist() != ids[1, 0].tolist()


def test_default_table_tokenizes_to_one_shared_row_of_todays_template_ids():
    from textinv.data import templates_for

    tokenize = _clip_tokenize()
    (ids,) = tokenize_prompt_table(tokenize, prompt_table("star", 3, "object"))
    (today,) = tokenize([t.format("star") for t in templates_for("object")])
    assert ids.shape == (1, len(today), 77) and ids[0].equal(today)


def test_a_family_with_two_tokenizers_gets_a_table_for_each():
    tokenize = _clip_tokenize()
    table = prompt_table("cat", 2, templates=["[name] [filewords]"], captions=["a", "b"])
    first, second = tokenize_prompt_table(lambda texts: (*tokenize(texts), *tokenize(texts)), table)
    assert first.shape == second.shape == (2, 1, 77) and first.equal(second)


def test_captions_follow_the_default_templates_and_an_image_without_one_keeps_the_bare_template(tmp_path, caplog):
    paths = _images(tmp_path / "imgs")
    caption_path(paths[0]).write_text("on a  white\nbackground", encoding="utf-8")
    with caplog.at_level(logging.INFO):
        table = training_prompts(paths, "<t>", "object", None)
    bare = [t.format("<t>") for t in OBJECT_TEMPLATES]
    assert table[0] == bare + [f"{t} on a white background" for t in bare]  # half the prompts carry the caption
    assert table[1] == table[2] == bare + bare  # no dangling space or comma where there is no caption
    assert "using the captions beside 1 of 3 images" in caplog.text
    assert training_prompts(paths, "<t>", "object", None, ignore_captions=True) == [bare, bare, bare]


def test_a_caption_all_images_share_goes_into_every_prompt(tmp_path, caplog):
    """Five photos on one background: the shared context is stated in every prompt, so the token need not learn it."""
    paths = _images(tmp_path / "imgs")
    for path in paths:
        caption_path(path).write_text("on a white background", encoding="utf-8")
    with caplog.at_level(logging.INFO):
        table = training_prompts(paths, "<t>", "object", None)
    bare = [t.format("<t>") for t in OBJECT_TEMPLATES]
    assert table == [[f"{t} on a white background" for t in bare]] * 3
    assert "in every prompt: all images share it" in caplog.text
    caption_path(paths[2]).write_text("on a blue background", encoding="utf-8")
    table = training_prompts(paths, "<t>", "object", None)  # captions that differ: half the prompts, as before
    assert table[2] == bare + [f"{t} on a blue background" for t in bare]
    assert training_prompts(paths, "<t>", "object", None, ignore_captions=True) == [bare, bare, bare]
