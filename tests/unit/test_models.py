"""Model sources: the name a model goes by in shared files, and the embedded toy model's folder."""

from __future__ import annotations

import json

import pytest

from textinv.errors import TextinvError
from textinv.models import (
    TOY_MODEL_DIR,
    TOY_MODEL_NAME,
    ModelSource,
    as_toy_source,
    shareable_model_name,
    source_from_name,
    toy_family,
    toy_model_dir,
)


def test_the_toy_model_is_named_textinv_toy_never_by_its_path():
    assert shareable_model_name(ModelSource(str(TOY_MODEL_DIR), "toy")) == TOY_MODEL_NAME == "textinv-toy"
    assert shareable_model_name(str(TOY_MODEL_DIR)) == "textinv-toy"
    assert shareable_model_name("textinv-toy") == "textinv-toy"


def test_a_local_folder_or_file_is_named_by_its_own_name(tmp_path):
    folder = tmp_path / "home" / "someone" / "my-sd15"
    folder.mkdir(parents=True)
    assert shareable_model_name(ModelSource(str(folder), "folder")) == "my-sd15"
    assert shareable_model_name(str(folder) + "/") == "my-sd15"
    assert shareable_model_name(str(tmp_path / "v1-5-pruned.safetensors")) == "v1-5-pruned.safetensors"


def test_a_hub_id_and_a_hub_cache_snapshot_are_named_by_the_hub_id(tmp_path):
    assert shareable_model_name("stable-diffusion-v1-5/stable-diffusion-v1-5") == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5"
    )
    snapshot = tmp_path / "hub" / "models--runwayml--stable-diffusion-v1-5" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert shareable_model_name(ModelSource(str(snapshot), "folder")) == "runwayml/stable-diffusion-v1-5"


def test_toy_model_dir_gives_the_embedded_folders_and_refuses_other_families():
    assert toy_model_dir() == toy_model_dir("sd1") == TOY_MODEL_DIR
    assert (toy_model_dir() / "model_index.json").is_file()
    assert toy_model_dir("sdxl") == TOY_MODEL_DIR.parent / "model-sdxl"
    assert json.loads((toy_model_dir("sdxl") / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusionXLPipeline"
    )
    with pytest.raises(TextinvError, match="no embedded toy model for family 'sd3'; choose one of sd1, sdxl"):
        toy_model_dir("sd3")


def test_the_sdxl_toy_twin_is_named_textinv_toy_sdxl_also_when_given_by_its_path():
    folder = toy_model_dir("sdxl")
    assert shareable_model_name(ModelSource(str(folder), "folder")) == "textinv-toy-sdxl"
    assert shareable_model_name(str(folder) + "/") == "textinv-toy-sdxl"
    assert source_from_name("textinv-toy-sdxl") == ModelSource(str(folder), "toy")
    assert as_toy_source(ModelSource(str(folder), "folder")) == ModelSource(str(folder), "toy")
    assert toy_family(str(TOY_MODEL_DIR)) == "sd1" and toy_family("textinv-toy") == "sd1"
