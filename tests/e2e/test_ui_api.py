"""`textinv ui`'s API driven by gradio_client, as a script would: /train on the toy model, then /generate."""

from __future__ import annotations

import socket

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from ui_server import EXAMPLE, REPO, non_loopback_address, running_ui

from textinv.embeddings import save_diffusers_embedding

pytestmark = pytest.mark.slow


def _gallery_paths(result) -> list[str]:
    return [item["image"] if isinstance(item, dict) else item for item in result]


def readme_snippet(marker: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_api_snippet_trains_and_generates_through_gradio_client(tmp_path, monkeypatch):
    """The README's gradio_client snippet, as written but for the server's port and a few steps."""
    with running_ui(tmp_path / "root") as (url, port):
        address = non_loopback_address()
        if address is not None:  # listening on loopback only: the machine's own network address is refused
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((address, port)) != 0
        code = readme_snippet("<!-- ui-api-snippet -->")
        assert "http://127.0.0.1:7860/" in code and "max_train_steps=600" in code
        code = code.replace("http://127.0.0.1:7860/", url).replace("max_train_steps=600", "max_train_steps=4")
        validate = 'validation_prompt="a <my-star>", validation_steps=2, api_name="/train"'
        code = code.replace('api_name="/train"', validate)
        monkeypatch.chdir(REPO)
        names: dict = {}
        exec(compile(code, "README.md", "exec"), names)  # noqa: S102
    progress, embedding, command = names["progress"], names["embedding"], names["command"]
    assert 'data-state="finished"' in progress and 'data-step="4"' in progress
    assert list(load_file(embedding)) == ["<my-star>"]
    assert command.startswith("textinv train ") and "--max_train_steps 4" in command
    assert len(_gallery_paths(names["validation"])) == 2 * 4  # validations at steps 2 and 4, 4 images each
    assert len(_gallery_paths(names["gallery"])) == 4
    with Image.open(names["files"][0]) as image:
        parameters = image.text["parameters"]
    assert parameters.startswith("a photo of a <my-star>") and "Seed: 0" in parameters
    assert (tmp_path / "root" / "my-star" / "learned_embeds.safetensors").is_file()


def test_generate_with_an_uploaded_concept_file_and_train_errors_as_one_line(tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    concept = save_diffusers_embedding(tmp_path / "blob.safetensors", "<blob>", torch.randn(1, 128) * 0.3)
    bad_template = tmp_path / "templates.txt"
    bad_template.write_text("a photo of a star\n", encoding="utf-8")
    with running_ui(tmp_path / "root") as (url, _):
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        images = [handle_file(str(p)) for p in sorted(EXAMPLE.glob("*.png"))]
        with pytest.raises(AppError, match=r"line 1 \('a photo of a star'\) has no \[name\]"):
            client.predict(
                images=images,
                placeholder_token="<t>",
                initializer_token="star",
                template_file=handle_file(str(bad_template)),
                api_name="/train",
            )
        with pytest.raises(AppError, match=r"'zxq' is 2 tokens"):  # found by the worker, after loading the model
            client.predict(images=images, placeholder_token="<t>", initializer_token="zxq", api_name="/train")
        assert not (tmp_path / "root" / "t" / "learned_embeds.safetensors").exists()
        gallery, files = client.predict(
            prompt="a <blob> on a white background",
            num_images=1,
            seed=7,
            concept_files=[handle_file(str(concept))],
            api_name="/generate",
        )
        assert len(_gallery_paths(gallery)) == 1
        with Image.open(files[0] if isinstance(files, list) else files) as image:
            assert image.size == (32, 32) and "Seed: 7" in image.text["parameters"]
