"""Training from one original-layout `.safetensors` checkpoint (A1111's and ComfyUI's kind), offline, as a user
meets it: refused in one line naming the command that fetches its configs; that command run (against a stand-in
Hub); then the same training learns what the diffusers folder it was made from learns, and the card's snippets run.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import card_snippets, learned, run_subprocess, train_args
from ldm_layout import config_repo, save_single_file
from stand_in_hub import folder_files, stand_in_hub

pytestmark = pytest.mark.slow
TOKEN = "<cat-toy>"


@pytest.fixture(scope="module")
def sdxl_ten_layer_model(tmp_path_factory) -> Path:
    """A tiny SDXL pipeline whose second text encoder has the tenth layer diffusers recognises SDXL by."""
    from diffusers import EulerDiscreteScheduler
    from helpers import tiny_sdxl_pipeline

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    out = tmp_path_factory.mktemp("sdxl10") / "tiny-sdxl"
    tiny_sdxl_pipeline(width_2=64, num_layers=10, hidden_act="gelu", scheduler=scheduler).save_pretrained(out)
    return out


def _offline_with_configs(folder: Path, model_file: Path, architecture: str, concept_dir: Path, tmp_path: Path):
    """The user's path: offline refusal, the printed command, then the environment in which training works."""
    hf_home = tmp_path / "hf"
    offline = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    refused = run_subprocess(train_args(model_file, concept_dir, tmp_path / "refused"), env=offline)
    assert refused.returncode == 2, refused.stderr[-2000:]
    # textinv's one line (transformers 4 may print a one-time note on a fresh HF_HOME before it)
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("textinv: error: ") and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    command = shlex.split(line.split("where it can be: ", 1)[1])
    repo = config_repo(architecture)
    assert command[1:3] == ["download", repo]

    files = folder_files(folder)
    with stand_in_hub(repo, files, hf_home) as (env, served):
        fetched = subprocess.run(
            [str(Path(sys.executable).with_name(command[0])), *command[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert served and not [name for name in served if name.endswith(".safetensors")]  # configs only, a few KB
    return offline


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_single_file_trains_offline_once_its_configs_are_cached(
    family, sd1_model, sdxl_ten_layer_model, concept_dir, tmp_path
):
    folder = sd1_model if family == "sd1" else sdxl_ten_layer_model
    model_file = save_single_file(folder, tmp_path / "my-model.safetensors")
    architecture = "v1" if family == "sd1" else "xl_base"
    env = _offline_with_configs(folder, model_file, architecture, concept_dir, tmp_path)

    # Both in a subprocess alike (the same threads, so the same summation order). The JAX backend reads a single
    # file's weights from the modules diffusers loaded (test_jax_modules: bitwise those of the folder's files).
    for model, out in ((model_file, "my-concept"), (folder, "from-folder")):
        trained = run_subprocess(train_args(model, concept_dir, tmp_path / out, "--seed", "0"), env=env)
        assert trained.returncode == 0, trained.stderr[-2000:]
    names = ["learned_embeds.safetensors"] + (["learned_embeds_2.safetensors"] if family == "sdxl" else [])
    for name in names:
        from_file, from_folder = learned(tmp_path / "my-concept", name), learned(tmp_path / "from-folder", name)
        assert torch.equal(from_file[TOKEN], from_folder[TOKEN]), name  # the same weights, so the same bits
    card = (tmp_path / "my-concept" / "README.md").read_text()
    assert "from_single_file('my-model.safetensors')" in card and str(tmp_path) not in card
    if family == "sd1":  # the card's snippets, pasted beside the model file and the concept, run offline
        for lang, code in card_snippets(card):
            if lang == "python":
                ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True)
            else:
                (command,) = code.splitlines()
                ran = run_subprocess(shlex.split(command)[1:], cwd=tmp_path, env=env)
            assert ran.returncode == 0, f"{code}\n{ran.stderr[-2000:]!r}"
        assert list(tmp_path.glob("*.png")) and list((tmp_path / "outputs").rglob("*.png"))
