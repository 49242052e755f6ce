"""`textinv train --backend jax` as a user runs it, on the tiny SD-1 pipeline, against `--backend torch`."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import learned, run_cli, train_args

pytest.importorskip("jax", reason='the JAX backend tests need pip install -e ".[jax]"')


TOKEN = "<cat-toy>"
OUTPUTS = {
    "learned_embeds.safetensors",
    "learned_embeds.bin",
    "token_identifier.txt",
    "type_of_concept.txt",
    "README.md",
}


@pytest.fixture(autouse=True)
def _compilation_cache(tmp_path_factory, monkeypatch):
    # One cache for the session's runs: the same step compiled once, not once per run.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jax-cache"))


def _initial_row(model) -> np.ndarray:
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    (toy,) = tokenizer.encode("toy", add_special_tokens=False)
    return CLIPTextModel.from_pretrained(model / "text_encoder").get_input_embeddings().weight[toy].detach().numpy()


def test_jax_backend_writes_what_torch_writes_and_learns_the_same(sd1_model, concept_dir, tmp_path):
    flags = (
        "--num_vectors",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--lr_scheduler",
        "linear",
        "--save_steps",
        "2",
    )
    runs = {}
    for backend in ("torch", "jax"):
        out = tmp_path / backend
        assert run_cli(train_args(sd1_model, concept_dir, out, "--backend", backend, *flags, steps=4)) == 0
        runs[backend] = out
    names = {backend: {p.name for p in out.iterdir() if p.is_file()} for backend, out in runs.items()}
    assert names["jax"] == names["torch"] and OUTPUTS <= names["jax"]
    assert "learned_embeds-steps-2.safetensors" in names["jax"]
    start = _initial_row(sd1_model)
    torch_rows, jax_rows = (learned(runs[b])[TOKEN].numpy() for b in ("torch", "jax"))
    assert jax_rows.shape == (2, 32)
    moved = np.linalg.norm(torch_rows - start[None])
    assert moved > 1e-3
    assert np.linalg.norm(jax_rows - torch_rows) <= 0.01 * moved


def test_jax_resume_is_bitwise_equal_and_the_other_backend_is_refused(sd1_model, concept_dir, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("--backend", "jax", "--checkpointing_steps", "2")
    assert run_cli(train_args(sd1_model, concept_dir, straight, *common, steps=4)) == 0
    assert run_cli(train_args(sd1_model, concept_dir, split, *common, steps=2)) == 0
    resume = ("--resume_from_checkpoint", "latest")
    assert run_cli(train_args(sd1_model, concept_dir, split, *common, *resume, steps=4)) == 0
    assert (learned(split)[TOKEN] == learned(straight)[TOKEN]).all()
    assert (split / "checkpoint-2" / "jax_state.safetensors").is_file()
    capsys.readouterr()
    torch_resume = train_args(sd1_model, concept_dir, split, "--backend", "torch", *resume, steps=6)
    assert run_cli(torch_resume) != 0
    err = capsys.readouterr().err.strip()
    assert "written by the jax backend; resume it with --backend jax" in err and "\n" not in err


def test_a_bad_initializer_gets_the_same_one_line_error_on_both_backends(sd1_model, concept_dir, tmp_path, capsys):
    errors = []
    for backend in ("torch", "jax"):
        args = train_args(sd1_model, concept_dir, tmp_path / backend, "--backend", backend, steps=1)
        args[args.index("--initializer_token") + 1] = "zxqwvbn"  # several BPE pieces, not one token
        assert run_cli(args) == 2
        errors.append(capsys.readouterr().err.strip())
    assert errors[0] == errors[1]
    assert re.search(r"--initializer_token 'zxqwvbn' is \d+ tokens", errors[1]) and "\n" not in errors[1]


@pytest.mark.parametrize("validation", [False, True])
def test_the_torch_unet_is_freed_unless_validation_samples_with_it(sd1_model, concept_dir, tmp_path, validation):
    from textinv.config import TrainConfig
    from textinv.train import setup

    extra = {"validation_prompt": f"a {TOKEN}"} if validation else {}
    cfg = TrainConfig(
        pretrained_model_name_or_path=str(sd1_model),
        train_data_dir=str(concept_dir),
        placeholder_token=TOKEN,
        initializer_token="toy",
        output_dir=str(tmp_path / "out"),
        resolution=32,
        max_train_steps=1,
        report_to="none",
        backend="jax",
        **extra,
    )
    run = setup(cfg)
    devices = {p.device.type for p in run.pipe.unet.parameters()}
    assert devices == ({"cpu"} if validation else {"meta"})


def test_concurrent_runs_a_run_beside_a_busy_process_and_a_lone_run_agree_to_the_bit(sd1_model, concept_dir, tmp_path):
    """Same flags and seed, same bits, whatever else the machine does (issue 23 §1, for XLA's CPU threads too):
    two JAX trainings contending for the cores, one beside a spinning process, one alone (batch 16, so XLA
    splits the step's work over its threads)."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the fixture's compilation cache dir included

    def start(name: str) -> subprocess.Popen:
        args = train_args(sd1_model, concept_dir, tmp_path / name, "--backend", "jax", "--train_batch_size", "16")
        cmd = [sys.executable, "-m", "textinv", *map(str, args)]
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(proc: subprocess.Popen) -> None:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]

    finish(start("alone"))  # compiles the step once, into the shared cache
    first, second = start("a"), start("b")
    finish(first)
    finish(second)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        finish(start("busy"))
    finally:
        busy.kill()
        busy.wait()
    rows = [learned(tmp_path / name)[TOKEN].numpy() for name in ("alone", "a", "b", "busy")]
    assert all(np.array_equal(rows[0], r) for r in rows[1:]), [float(np.abs(rows[0] - r).max()) for r in rows[1:]]


def test_a_cached_hub_id_trains_with_validation_images_and_tensorboard_scalars(sd1_model, concept_dir, tmp_path):
    """Issue 21 §1 on the JAX backend: a hub id from the local cache (offline), validation images, TensorBoard."""
    import os

    from helpers import cache_as_hub_repo, run_subprocess
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cache = cache_as_hub_repo(sd1_model, tmp_path / "hf-cache", "someone/tiny-sd")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    out = tmp_path / "out"
    extra = ["--backend", "jax", "--validation_prompt", f"a {TOKEN} backpack", "--num_validation_images", "1"]
    args = train_args("someone/tiny-sd", concept_dir, out, *extra, "--validation_steps", "2", steps=2)
    args[args.index("none")] = "tensorboard"
    proc = run_subprocess(args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert learned(out)[TOKEN].shape == (1, 32)
    assert len(list((out / "validation" / "step-2").glob("*.png"))) == 1
    assert "someone/tiny-sd" in (out / "README.md").read_text()
    events = EventAccumulator(str(out / "logs" / "textual_inversion"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2] and "lr" in events.Tags()["scalars"]
    assert any(tag.startswith("validation") for tag in events.Tags()["images"])
