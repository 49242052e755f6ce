"""`textinv ui`'s API driven by gradio_client, as a script would: /train on the toy model, then /generate."""

from __future__ import annotations

import socket

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from ui_server import EXAMPLE, non_loopback_address, running_ui

from textinv.embeddings import save_diffusers_embedding

pytestmark = pytest.mark.slow


def _gallery_paths(result) -> list[str]:
    return [item["image"] if isinstance(item, dict) else item for item in result]


def test_train_and_generate_through_gradio_client(tmp_path):
    from gradio_client import Client, handle_file

    with running_ui(tmp_path / "root") as (url, port):
        address = non_loopback_address()
        if address is not None:  # listening on loopback only: the machine's own network address is refused
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((address, port)) != 0
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        progress, _, validation, embedding, command, status = client.predict(
            images=[handle_file(str(p)) for p in sorted(EXAMPLE.glob("*.png"))],
            placeholder_token="<api-star>",
            initializer_token="star",
            max_train_steps=4,
            validation_prompt="a photo of a <api-star>",
            validation_steps=2,
            seed=0,
            api_name="/train",
        )
        assert 'data-state="finished"' in progress and 'data-step="4"' in progress
        assert list(load_file(embedding)) == ["<api-star>"]
        assert command.startswith("textinv train ") and "--max_train_steps 4" in command
        assert len(_gallery_paths(validation)) == 2 * 4  # validations at steps 2 and 4, 4 images each
        gallery, files = client.predict(
            prompt="a photo of a <api-star>", num_images=2, seed=3, concepts=["api-star"], api_name="/generate"
        )
        assert len(_gallery_paths(gallery)) == 2
        with Image.open(files[0] if isinstance(files, list) else files) as image:
            parameters = image.text["parameters"]
        assert parameters.startswith("a photo of a <api-star>") and "Seed: 3" in parameters
    assert (tmp_path / "root" / "api-star" / "learned_embeds.safetensors").is_file()


def test_generate_with_an_uploaded_concept_file(tmp_path):
    from gradio_client import Client, handle_file

    concept = save_diffusers_embedding(tmp_path / "blob.safetensors", "<blob>", torch.randn(1, 128) * 0.3)
    with running_ui(tmp_path / "root") as (url, _):
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
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
