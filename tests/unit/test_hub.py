"""The model card: names the base model without local paths, and its snippets are runnable code."""

from __future__ import annotations

import ast

from helpers import card_snippets

from textinv.hub import write_model_card
from textinv.models import TOY_MODEL_DIR, ModelSource


def _card(tmp_path, base_model, **extra) -> str:
    out = tmp_path / "my-concept"
    out.mkdir(exist_ok=True)
    kwargs = dict(placeholder_token="<t>", initializer_token="star", learnable_property="object", num_vectors=1)
    return write_model_card(out, base_model=base_model, steps=3, **kwargs, **extra).read_text()


def test_a_local_model_folder_is_named_not_pathed_and_no_link_goes_nowhere(tmp_path):
    model = tmp_path / "home" / "someone" / "my-sd15"
    model.mkdir(parents=True)
    text = _card(tmp_path, ModelSource(str(model), "folder"))
    assert "someone" not in text and str(tmp_path) not in text
    assert "https://github.com/" not in text
    assert "base_model:" not in text  # the Hub reads it as a repo id
    snippets = card_snippets(text)
    assert [lang for lang, _ in snippets] == ["python", "bash"]
    assert "from_pretrained('my-sd15')" in snippets[0][1] and "load_textual_inversion('my-concept')" in snippets[0][1]
    assert snippets[1][1] == "textinv generate 'a photo of a <t>' --model my-sd15 --concept my-concept"


def test_a_hub_model_goes_in_the_front_matter_and_a_pushed_card_loads_from_the_repo(tmp_path):
    text = _card(tmp_path, "stable-diffusion-v1-5/stable-diffusion-v1-5", repo_id="me/my-concept")
    assert "base_model: stable-diffusion-v1-5/stable-diffusion-v1-5\n" in text
    assert "load_textual_inversion('me/my-concept')" in text
    (_, shell) = card_snippets(text)[1]
    assert shell.splitlines() == [
        "hf download me/my-concept",
        "textinv generate 'a photo of a <t>' --model stable-diffusion-v1-5/stable-diffusion-v1-5"
        " --concept me/my-concept",
    ]


def test_the_toy_models_card_loads_it_through_textinv_and_every_python_snippet_parses(tmp_path):
    for base in (ModelSource(str(TOY_MODEL_DIR), "toy"), "textinv-toy"):
        text = _card(tmp_path, base)
        (lang, python), (_, shell) = card_snippets(text)
        ast.parse(python)
        assert "from_pretrained(toy_model_dir())" in python
        assert "--model" not in shell and "textinv toy path" in text
