"""A single-file checkpoint where the Hub cannot be reached: one line naming the repo of its configs and a command
that fetches them; that command, run against a stand-in Hub, leaves what diffusers' `from_single_file` reads."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import run_cli, train_args
from safetensors.torch import save_file

from textinv.models import single_file_config_repo

# One key (and shape) that diffusers' architecture rule reads for each family; a header is all it looks at.
ARCHITECTURE_KEYS = {
    "v1": ("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", (320, 768)),
    "v2": ("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", (320, 1024)),
    "xl_base": ("conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias", (8,)),
}


def _config_repo(architecture: str) -> str:
    """Where the installed diffusers takes an architecture's configs from (the v1 repo moved in 2024)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    return DIFFUSERS_DEFAULT_PIPELINE_PATHS[architecture]["pretrained_model_name_or_path"]


def _checkpoint(path: Path, architecture: str) -> Path:
    key, shape = ARCHITECTURE_KEYS[architecture]
    save_file({key: torch.zeros(shape)}, str(path))
    return path


@pytest.mark.parametrize("architecture", list(ARCHITECTURE_KEYS))
def test_offline_single_file_names_its_config_repo_in_one_line(
    architecture, concept_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _checkpoint(tmp_path / "my-model.safetensors", architecture)
    repo = _config_repo(architecture)
    assert repo.split("/")[1] in {"stable-diffusion-v1-5", "stable-diffusion-2-1", "stable-diffusion-xl-base-1.0"}
    assert single_file_config_repo(model) == repo
    assert run_cli(train_args(model, concept_dir, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert f"configs of {repo}" in err and f" download {repo} --include " in err, err


def test_a_ckpt_file_gets_the_offline_line_without_a_repo(concept_dir, tmp_path, monkeypatch, capsys):
    """A pickled .ckpt has no header to read the architecture from cheaply: the line does without the repo."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tmp_path / "old.ckpt"
    key, shape = ARCHITECTURE_KEYS["v1"]
    torch.save({"state_dict": {key: torch.zeros(shape)}}, model)
    assert single_file_config_repo(model) is None
    assert run_cli(train_args(model, concept_dir, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert "Hub cannot be reached" in err and "run once online" in err and "\n" not in err, err


class _StandInHub(http.server.BaseHTTPRequestHandler):
    """The routes `hf download` uses: a revision and its file tree, a file's metadata (HEAD) and its bytes."""

    files: dict[str, bytes] = {}
    repo = ""
    sha = "0123456789abcdef0123456789abcdef01234567"
    served: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _reply(self, body: bytes, headers: dict[str, str], send_body: bool) -> None:
        self.send_response(200)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _route(self, send_body: bool) -> None:
        path = self.path.split("?")[0]
        if path.startswith(f"/api/models/{self.repo}/revision/"):
            info = {"id": self.repo, "sha": self.sha, "private": False, "downloads": 0, "likes": 0, "tags": []}
            info["siblings"] = [{"rfilename": name} for name in self.files]
            return self._reply(json.dumps(info).encode(), {"Content-Type": "application/json"}, send_body)
        if path.startswith(f"/api/models/{self.repo}/tree/"):
            tree = [
                {"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()}
                for name, body in self.files.items()
            ]
            return self._reply(json.dumps(tree).encode(), {"Content-Type": "application/json"}, send_body)
        for revision in ("main", self.sha):
            prefix = f"/{self.repo}/resolve/{revision}/"
            if path.startswith(prefix) and path[len(prefix) :] in self.files:
                name = path[len(prefix) :]
                body = self.files[name]
                if send_body:
                    self.served.append(name)
                etag = f'"{hashlib.sha1(body).hexdigest()}"'
                return self._reply(body, {"X-Repo-Commit": self.sha, "ETag": etag}, send_body)
        self.send_response(404)
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        self._route(send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._route(send_body=True)


def test_the_printed_command_fetches_what_from_single_file_reads_offline(concept_dir, tmp_path, monkeypatch, capsys):
    repo = _config_repo("v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_cli(train_args(_checkpoint(tmp_path / "m.safetensors", "v1"), concept_dir, tmp_path / "out")) == 2
    command = shlex.split(capsys.readouterr().err.strip().split("where it can be: ", 1)[1])
    assert command[1:3] == ["download", repo]  # `hf`, or `huggingface-cli` before huggingface_hub 0.34

    configs = {
        "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
        "unet/config.json": b'{"sample_size": 64}',
        "scheduler/scheduler_config.json": b'{"_class_name": "PNDMScheduler"}',
        "tokenizer/vocab.json": b'{"a": 0}',
        "tokenizer/merges.txt": b"#version: 0.2\n",
    }
    weights = {"unet/diffusion_pytorch_model.safetensors": b"\0" * 4096, "v1-5-pruned.safetensors": b"\1" * 4096}
    _StandInHub.files, _StandInHub.repo, _StandInHub.served = {**configs, **weights}, repo, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandInHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
    env.update(HF_HUB_DISABLE_XET="1", HF_HUB_ENABLE_HF_TRANSFER="0", HF_HUB_DISABLE_TELEMETRY="1")
    cli = Path(sys.executable).with_name(command[0])
    try:
        done = subprocess.run([str(cli), *command[1:]], env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert sorted(_StandInHub.served) == sorted(configs)  # the configs, none of the weights

    # What diffusers' from_single_file does next, offline: the same snapshot call, local files only.
    read = (
        "import sys; from huggingface_hub import snapshot_download;"
        "print(snapshot_download(sys.argv[1], local_files_only=True,"
        " allow_patterns=['**/*.json', '*.json', '*.txt', '**/*.txt', '**/*.model']))"
    )
    env["HF_HUB_OFFLINE"] = "1"
    found = subprocess.run([sys.executable, "-c", read, repo], env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    folder = Path(found.stdout.strip())
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(configs)
