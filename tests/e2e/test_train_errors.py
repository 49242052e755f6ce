"""Bad input to `textinv train`: one line naming the problem and the fix, exit 2, no traceback, nothing lost."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch
from conftest import write_concept_images
from helpers import run_cli, run_subprocess, train_args


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    errors = [line for line in err if line.startswith("textinv: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


def _fails(capsys, args, *expected: str) -> str:
    assert run_cli(args) == 2
    line = _error_line(capsys)
    for text in expected:
        assert text in line, line
    return line


def test_missing_data_dir(sd1_model, tmp_path, capsys):
    _fails(capsys, train_args(sd1_model, tmp_path / "nope", tmp_path / "o"), "does not exist", "--train_data_dir")


def test_empty_data_dir(sd1_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(capsys, train_args(sd1_model, tmp_path / "empty", tmp_path / "o"), "is empty", ".png")


def test_data_dir_without_readable_images(sd1_model, tmp_path, capsys):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    _fails(capsys, train_args(sd1_model, d, tmp_path / "o"), "no readable image", "notes.txt")


def test_corrupt_files_are_skipped_with_a_warning(sd1_model, tmp_path, caplog):
    d = write_concept_images(tmp_path / "mixed", n=3)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"garbage" * 10)
    (d / "notes.md").write_text("not an image")  # (.txt files are captions: read, never warned about)
    with caplog.at_level(logging.WARNING):
        assert run_cli(train_args(sd1_model, d, tmp_path / "o", steps=1)) == 0
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "broken.jpg" in warned and "notes.md" in warned


def test_placeholder_already_in_vocabulary(sd1_model, concept_dir, tmp_path, capsys):
    args = train_args(sd1_model, concept_dir, tmp_path / "o")
    args[args.index("<cat-toy>")] = "cat"
    _fails(capsys, args, "'cat'", "already in the tokenizer's vocabulary")


def test_initializer_that_is_several_tokens(sd1_model, concept_dir, tmp_path, capsys):
    args = train_args(sd1_model, concept_dir, tmp_path / "o")
    args[args.index("toy")] = "cat-toy"
    _fails(capsys, args, "is 3 tokens", "['cat', '-', 'toy']", "single")


def test_model_path_that_is_not_a_pipeline(concept_dir, tmp_path, capsys):
    (tmp_path / "notamodel").mkdir()
    _fails(capsys, train_args(tmp_path / "notamodel", concept_dir, tmp_path / "o"), "not a Stable Diffusion")
    (tmp_path / "weights.txt").write_text("x")
    _fails(capsys, train_args(tmp_path / "weights.txt", concept_dir, tmp_path / "o"), "not a Stable Diffusion")


def test_resume_path_that_does_not_exist(sd1_model, concept_dir, tmp_path, capsys):
    args = train_args(sd1_model, concept_dir, tmp_path / "o", "--resume_from_checkpoint", "checkpoint-99")
    _fails(capsys, args, "checkpoint-99", "not found")


def test_resume_latest_without_checkpoints_starts_fresh(sd1_model, concept_dir, tmp_path):
    args = train_args(sd1_model, concept_dir, tmp_path / "o", "--resume_from_checkpoint", "latest", steps=1)
    assert run_cli(args) == 0


def test_finished_output_dir_is_never_overwritten(sd1_model, concept_dir, tmp_path, capsys):
    out = tmp_path / "done"
    assert run_cli(train_args(sd1_model, concept_dir, out, steps=1)) == 0
    digest = hashlib.sha256((out / "learned_embeds.safetensors").read_bytes()).hexdigest()
    capsys.readouterr()
    args = train_args(sd1_model, concept_dir, out, "--learning_rate", "1", steps=2)
    _fails(capsys, args, "holds a finished run", "--resume_from_checkpoint latest", "--overwrite_output_dir")
    assert hashlib.sha256((out / "learned_embeds.safetensors").read_bytes()).hexdigest() == digest
    assert run_cli(args + ["--overwrite_output_dir"]) == 0
    assert hashlib.sha256((out / "learned_embeds.safetensors").read_bytes()).hexdigest() != digest


def test_interrupted_output_dir_is_not_restarted_silently(sd1_model, concept_dir, tmp_path, capsys):
    out = tmp_path / "half"
    assert run_cli(train_args(sd1_model, concept_dir, out, "--checkpointing_steps", "1", steps=1)) == 0
    (out / "learned_embeds.safetensors").unlink()
    capsys.readouterr()
    _fails(capsys, train_args(sd1_model, concept_dir, out, steps=2), "interrupted run (checkpoint-1)")
    assert (out / "checkpoint-1").is_dir()


def test_nan_loss_stops_and_keeps_the_last_good_embedding(sd1_model, concept_dir, tmp_path, capsys, monkeypatch):
    import textinv.backends.pytorch as backend

    real = backend.diffusion_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(backend, "diffusion_loss", poisoned)
    out = tmp_path / "nan"
    line = _fails(
        capsys,
        train_args(sd1_model, concept_dir, out, "--checkpointing_steps", "2", steps=6),
        "NaN/inf at step 4",
        "learned_embeds-steps-3.safetensors",
        "checkpoint-2",
        "--learning_rate",
    )
    assert "Traceback" not in line
    from safetensors.torch import load_file

    kept = load_file(str(out / "learned_embeds-steps-3.safetensors"))["<cat-toy>"]
    assert torch.isfinite(kept).all()
    assert (out / "checkpoint-2").is_dir()
    assert not (out / "learned_embeds.safetensors").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_the_frozen_weights_in_half_and_trains_fp32_rows(
    sd1_model, concept_dir, tmp_path, precision, monkeypatch
):
    from helpers import learned

    import textinv.backends.pytorch as backend

    real, seen = backend.diffusion_loss, []

    def noting_dtypes(draws, posteriors, prompt_ids, family, unet, *a, **k):
        encoder_weight = next(p for n, p in family.text_encoders[0].named_parameters() if "fc1" in n)
        seen.append((unet.conv_in.weight.dtype, encoder_weight.dtype, family.rows[0].dtype))
        return real(draws, posteriors, prompt_ids, family, unet, *a, **k)

    monkeypatch.setattr(backend, "diffusion_loss", noting_dtypes)
    out = tmp_path / precision
    assert run_cli(train_args(sd1_model, concept_dir, out, "--mixed_precision", precision, steps=2)) == 0
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert seen and set(seen) == {(half, half, torch.float32)}
    rows = learned(out)["<cat-toy>"]
    assert rows.dtype == torch.float32 and torch.isfinite(rows).all()


def test_xformers_missing_is_a_clear_error(sd1_model, concept_dir, tmp_path, capsys, monkeypatch):
    import importlib.util
    import sys

    if importlib.util.find_spec("xformers") is not None:  # hide an installed xformers from the trainer
        monkeypatch.setitem(sys.modules, "xformers", None)
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xformers" else _real(name))
    args = train_args(sd1_model, concept_dir, tmp_path / "o", "--enable_xformers_memory_efficient_attention")
    _fails(capsys, args, "pip install xformers", "SDPA")


def test_wandb_with_hub_token_is_refused(sd1_model, concept_dir, tmp_path, capsys):
    args = train_args(sd1_model, concept_dir, tmp_path / "o", "--hub_token", "hf_secret123")
    args[args.index("none")] = "wandb"
    line = _fails(capsys, args, "--hub_token", "huggingface-cli login")
    assert "hf_secret123" not in line


def test_cli_error_has_no_traceback_and_exit_code_2(tmp_path):
    proc = run_subprocess(
        [
            "train",
            "--train_data_dir",
            tmp_path / "missing",
            "--placeholder_token",
            "<x>",
            "--initializer_token",
            "toy",
            "--pretrained_model_name_or_path",
            tmp_path / "nomodel",
        ]
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("textinv: error:"), proc.stderr
    args = ["--debug", "train", "--train_data_dir", tmp_path, "--placeholder_token", "<x>"]
    args += ["--initializer_token", "toy", "--pretrained_model_name_or_path", tmp_path / "nomodel"]
    debug = run_subprocess(args)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_bad_numbers_are_refused(sd1_model, concept_dir, tmp_path, capsys):
    _fails(capsys, train_args(sd1_model, concept_dir, tmp_path / "o", "--num_vectors", "0"), "--num_vectors")
    _fails(capsys, train_args(sd1_model, concept_dir, tmp_path / "o", "--resolution", "30"), "multiple of 8")
    args = train_args(sd1_model, concept_dir, tmp_path / "o", "--snr_gamma", "-1")
    _fails(capsys, args, "--snr_gamma", "0 for plain MSE")
    _fails(capsys, train_args(sd1_model, concept_dir, tmp_path / "o", "--flip_p", "1.5"), "--flip_p", "probability")


def _real(name: str):
    import importlib.machinery

    return importlib.machinery.PathFinder.find_spec(name)


def test_use_8bit_adam_without_bitsandbytes_is_one_line(sd1_model, concept_dir, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    args = train_args(sd1_model, concept_dir, tmp_path / "o", "--use_8bit_adam")
    _fails(capsys, args, "--use_8bit_adam", "pip install bitsandbytes")


def test_sdxl_initializer_of_several_tokens_names_the_tokenizer(sdxl_model, concept_dir, tmp_path, capsys):
    args = train_args(sdxl_model, concept_dir, tmp_path / "o")
    args[args.index("--initializer_token") + 1] = "toyzzqx"
    _fails(capsys, args, "--initializer_token 'toyzzqx' is", "in tokenizer, not one")


def test_resuming_a_checkpoint_of_another_model_family_is_refused(sd1_model, concept_dir, tmp_path, capsys):
    import json

    out = tmp_path / "fam"
    assert run_cli(train_args(sd1_model, concept_dir, out, "--checkpointing_steps", "1", steps=1)) == 0
    state_file = out / "checkpoint-1" / "training_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "embedding_dim": 768}))
    capsys.readouterr()
    args = train_args(sd1_model, concept_dir, out, "--resume_from_checkpoint", "latest", steps=2)
    _fails(capsys, args, "sd1 (768)", "custom-32 (32)")


def test_fp8_base_with_a_full_pipeline_save_is_refused(sd1_model, concept_dir, tmp_path, capsys):
    """The saved pipeline would hold the fp8-rounded weights, not the user's model."""
    args = train_args(sd1_model, concept_dir, tmp_path / "o", "--fp8_base", "--save_as_full_pipeline")
    _fails(capsys, args, "--fp8_base", "--save_as_full_pipeline", "drop one")
    assert not (tmp_path / "o").exists()


def test_fp16_on_a_cpu_run_is_warned_about_in_one_line(sd1_model, concept_dir, tmp_path, caplog):
    import logging

    for precision in ("fp16", "bf16"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="textinv"):
            args = train_args(sd1_model, concept_dir, tmp_path / precision, "--mixed_precision", precision, steps=1)
            assert run_cli(args) == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if precision == "fp16":
            assert len(warnings) == 1 and "fp16 on the CPU" in warnings[0] and "bf16" in warnings[0], warnings
            assert "\n" not in warnings[0]
        else:
            assert not warnings, warnings
