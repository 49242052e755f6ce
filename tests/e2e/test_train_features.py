"""Validation images, trackers, the Hub push, the drop-in flag set and image handling of `textinv train`."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import learned, run_cli, run_subprocess, train_args
from PIL import Image
from safetensors.torch import load_file

from textinv.data import load_concept_images, to_rgb

DIFFUSERS_FLAGS = """--pretrained_model_name_or_path --revision --variant --tokenizer_name --train_data_dir
--placeholder_token --initializer_token --learnable_property --repeats --num_vectors --output_dir --seed
--resolution --center_crop --train_batch_size --num_train_epochs --max_train_steps --gradient_accumulation_steps
--gradient_checkpointing --learning_rate --scale_lr --lr_scheduler --lr_warmup_steps --lr_num_cycles
--dataloader_num_workers --adam_beta1 --adam_beta2 --adam_weight_decay --adam_epsilon --push_to_hub --hub_token
--hub_model_id --logging_dir --mixed_precision --allow_tf32 --report_to --validation_prompt --num_validation_images
--validation_steps --validation_epochs --local_rank --checkpointing_steps --checkpoints_total_limit
--resume_from_checkpoint --enable_xformers_memory_efficient_attention --no_safe_serialization --save_steps
--save_as_full_pipeline""".split()


def test_help_documents_every_diffusers_flag():
    proc = run_subprocess(["train", "--help"])
    assert proc.returncode == 0
    for flag in DIFFUSERS_FLAGS:
        assert flag in proc.stdout, flag


def test_diffusers_defaults_are_kept():
    from textinv.config import TrainConfig

    c = TrainConfig()
    assert (c.resolution, c.train_batch_size, c.max_train_steps, c.learning_rate) == (512, 16, 5000, 1e-4)
    assert (c.repeats, c.lr_scheduler, c.lr_warmup_steps, c.adam_weight_decay) == (100, "constant", 500, 1e-2)
    assert (c.output_dir, c.checkpointing_steps, c.save_steps, c.validation_steps) == (
        "text-inversion-model",
        500,
        500,
        100,
    )
    assert (c.mixed_precision, c.report_to, c.num_validation_images, c.learnable_property) == (
        "no",
        "tensorboard",
        4,
        "object",
    )


def test_validation_images_are_saved_logged_and_shown_in_the_model_card(sd1_model, concept_dir, tmp_path):
    out = tmp_path / "val"
    extra = ["--validation_prompt", "a <cat-toy> backpack", "--num_validation_images", "2"]
    extra += ["--validation_steps", "2", "--report_to", "tensorboard"]
    args = train_args(sd1_model, concept_dir, out, *extra, steps=4)
    args[args.index("none") - 1 : args.index("none") + 1] = []
    assert run_cli(args) == 0
    for step in (2, 4):
        pngs = sorted((out / "validation" / f"step-{step}").glob("*.png"))
        assert len(pngs) == 2
        with Image.open(pngs[0]) as im:
            assert im.size == (32, 32)
            assert "a <cat-toy> backpack" in im.text.get("parameters", "")
            # no textinv.json beside this model: diffusers' validation recipe
            assert "Steps: 25, Sampler: DPM++ 2M," in im.text["parameters"]
    assert "validation/step-4/00.png" in (out / "README.md").read_text()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs" / "textual_inversion"), size_guidance={"images": 0})
    events.Reload()
    assert "loss" in events.Tags()["scalars"] and "lr" in events.Tags()["scalars"]
    assert "step_time" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    assert any(tag.startswith("validation") for tag in events.Tags()["images"])


def test_validation_samples_with_the_models_recipe_and_a_bad_recipe_stops_before_training(
    sd1_model, concept_dir, tmp_path, capsys
):
    model = tmp_path / "model"
    shutil.copytree(sd1_model, model)
    recipe = {"num_inference_steps": 3, "guidance_scale": 2.5, "scheduler": "ddim", "skip_early_cfg": 0.5}
    (model / "textinv.json").write_text(json.dumps({"generate": recipe}))
    out = tmp_path / "val"
    args = train_args(model, concept_dir, out, "--validation_prompt", "a <cat-toy>", "--num_validation_images", "1")
    assert run_cli(args) == 0
    with Image.open(out / "validation" / "step-4" / "00.png") as im:
        text = im.text["parameters"]
    assert "Steps: 3, Sampler: DDIM, CFG scale: 2.5," in text and "Skip Early CFG: 0.5" in text

    (model / "textinv.json").write_text(json.dumps({"generate": {**recipe, "skip_early_cfg": 1.5}}))
    capsys.readouterr()
    assert run_cli(train_args(model, concept_dir, tmp_path / "bad", "--validation_prompt", "a <cat-toy>")) == 2
    err = capsys.readouterr().err.strip()
    assert "textinv.json" in err and "generate.skip_early_cfg" in err and "\n" not in err, err
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_push_to_hub_uploads_the_folder_and_never_shows_the_token(
    sd1_model, concept_dir, tmp_path, monkeypatch, capsys, caplog
):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, exist_ok):
            calls["repo"] = (repo_id, exist_ok)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns):
            from pathlib import Path

            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["ignore"] = ignore_patterns

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    secret = "hf_TOPSECRETtoken42"
    out = tmp_path / "push"
    extra = ["--push_to_hub", "--hub_model_id", "me/cat-toy", "--hub_token", secret, "--checkpointing_steps", "1"]
    with caplog.at_level(logging.DEBUG):
        assert run_cli(train_args(sd1_model, concept_dir, out, *extra, steps=2)) == 0
    assert calls["token"] == secret and calls["repo"] == ("me/cat-toy", True)
    assert {"learned_embeds.safetensors", "README.md", "token_identifier.txt"} <= set(calls["files"])
    assert "checkpoint-*" in calls["ignore"]
    assert "me/cat-toy" in (out / "README.md").read_text()
    captured = capsys.readouterr()
    shown = captured.out + captured.err + caplog.text
    assert secret not in shown
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_diffusers_example_test_command_runs_unchanged(sd1_model, tmp_path):
    """The command line of diffusers' own example test (test_textual_inversion), pointed at textinv."""
    from conftest import write_concept_images

    data = write_concept_images(tmp_path / "imgs", n=3, size=64)
    out = tmp_path / "tmpdir"
    args = f"""train --pretrained_model_name_or_path {sd1_model} --train_data_dir {data}
        --learnable_property object --placeholder_token <cat-toy> --initializer_token a
        --validation_prompt <cat-toy> --validation_steps 1 --save_steps 1 --num_vectors 2
        --resolution 64 --train_batch_size 1 --gradient_accumulation_steps 1 --max_train_steps 2
        --learning_rate 5.0e-04 --scale_lr --lr_scheduler constant --lr_warmup_steps 0
        --output_dir {out}""".split()
    assert run_cli(args) == 0
    assert (out / "learned_embeds.safetensors").is_file()
    assert (out / "learned_embeds-steps-1.safetensors").is_file()
    assert learned(out)["<cat-toy>"].shape == (2, 32)


def test_two_accumulated_micro_batches_of_one_learn_what_one_batch_of_two_learns(sd1_model, concept_dir, tmp_path):
    """Accumulation draws the same samples as the larger batch and averages the same gradients."""
    rows = {}
    for name, flags in (("accum", ["--train_batch_size", "1", "--gradient_accumulation_steps", "2"]), ("batch", [])):
        assert run_cli(train_args(sd1_model, concept_dir, tmp_path / name, *flags, steps=3)) == 0
        rows[name] = learned(tmp_path / name)["<cat-toy>"]
    init = _initializer_row(sd1_model)
    assert not torch.allclose(rows["batch"], init)
    torch.testing.assert_close(rows["accum"], rows["batch"], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_learns_what_the_plain_backward_learns(sd1_model, concept_dir, tmp_path):
    rows = {}
    for name, flags in (("checkpointed", ["--gradient_checkpointing"]), ("plain", [])):
        assert run_cli(train_args(sd1_model, concept_dir, tmp_path / name, *flags, steps=2)) == 0
        rows[name] = learned(tmp_path / name)["<cat-toy>"]
    torch.testing.assert_close(rows["checkpointed"], rows["plain"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "cosine_with_restarts", "polynomial", "constant_with_warmup"])
def test_the_lr_of_every_step_is_diffusers_schedule(sd1_model, concept_dir, tmp_path, schedule):
    from diffusers.optimization import get_scheduler

    from textinv.config import build_config
    from textinv.progress import StepDone
    from textinv.train import train

    steps, warmup, lr = 6, 2, 5e-3
    flags = {"lr_scheduler": schedule, "lr_warmup_steps": warmup, "lr_num_cycles": 2}
    cfg = build_config(_config_of(sd1_model, concept_dir, tmp_path / schedule, steps, lr, **flags))
    seen = []
    train(cfg, subscribers=[lambda e: seen.append(e.lr) if isinstance(e, StepDone) else None])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    expected = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=steps, num_cycles=2)
    want = []
    for _ in range(steps):
        optimizer.step()
        expected.step()
        want.append(expected.get_last_lr()[0])
    assert seen == pytest.approx(want, rel=1e-12)
    assert len(set(seen)) >= 2  # the schedule really moves


def test_center_crop_takes_the_middle_square_and_style_uses_style_templates(tmp_path):
    from textinv.data import STYLE_TEMPLATES, preprocess, templates_for

    image = Image.new("RGB", (30, 10), (0, 0, 255))
    image.paste((255, 0, 0), (10, 0, 20, 10))  # the middle square is red, the sides blue
    cropped = preprocess(image, 8, center_crop=True, flip=False)
    squashed = preprocess(image, 8, center_crop=False, flip=False)
    assert (cropped[0] > 0.9).all() and (cropped[2] < -0.9).all()  # all red
    assert (squashed[2, :, 0] > 0.9).all()  # the left edge stays blue when the whole image is resized
    assert templates_for("style") is STYLE_TEMPLATES


def test_save_steps_writes_bin_copies_with_no_safe_serialization(sd1_model, concept_dir, tmp_path):
    extra = ["--learnable_property", "style", "--no_safe_serialization", "--save_steps", "1"]
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "ga", *extra, steps=2)) == 0
    assert (tmp_path / "ga" / "type_of_concept.txt").read_text() == "style"
    step1 = torch.load(tmp_path / "ga" / "learned_embeds-steps-1.bin", weights_only=True)["<cat-toy>"]
    step2 = torch.load(tmp_path / "ga" / "learned_embeds-steps-2.bin", weights_only=True)["<cat-toy>"]
    assert step1.shape == (1, 32) and not torch.equal(step1, step2)
    assert torch.equal(step2, learned(tmp_path / "ga")["<cat-toy>"])
    assert not (tmp_path / "ga" / "learned_embeds-steps-1.safetensors").exists()


def _initializer_row(model: Path) -> torch.Tensor:
    from transformers import CLIPTokenizer

    token_id = CLIPTokenizer.from_pretrained(model / "tokenizer").encode("toy", add_special_tokens=False)[0]
    weights = load_file(str(next((model / "text_encoder").glob("*.safetensors"))))
    return next(w for k, w in weights.items() if k.endswith("token_embedding.weight"))[token_id].unsqueeze(0)


def _config_of(model: Path, data: Path, out: Path, steps: int, lr: float, **flags) -> dict:
    """The settings `train_args` gives, as a config dict."""
    return {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "placeholder_token": "<cat-toy>",
        "initializer_token": "toy", "resolution": 32, "train_batch_size": 2, "max_train_steps": steps,
        "learning_rate": lr, "seed": 0, "report_to": "none", "output_dir": str(out), **flags,
    }  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
        lambda: Image.new("P", (8, 8), 3),
        lambda: Image.new("L", (8, 8), 128),
        lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)),
        lambda: Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)),
        lambda: Image.new("LA", (8, 8), (10, 255)),
        lambda: Image.new("1", (8, 8), 1),
        lambda: Image.new("F", (8, 8), 0.5),
    ],
)
def test_images_in_any_mode_become_rgb(make):
    image = to_rgb(make())
    assert image.mode == "RGB" and image.size == (8, 8)


def test_transparent_pixels_become_white_and_16_bit_keeps_its_range():
    rgb = to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    white16 = to_rgb(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)))
    assert white16.getpixel((0, 0)) == (255, 255, 255)
    mid16 = to_rgb(Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)))
    assert abs(mid16.getpixel((0, 0))[0] - 128) <= 1


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    folder = tmp_path / "exif"
    folder.mkdir()
    image.save(folder / "a.jpg", exif=exif)
    images, _ = load_concept_images(folder)
    assert images[0].size == (10, 20)


def test_readme_documents_every_flag_with_its_default():
    import re

    from helpers import REPO

    from textinv.config import config_fields

    readme = (REPO / "README.md").read_text()
    rows = {}  # flag -> the table's default column ("| `--flag`, `--alias` | default | meaning |")
    for line in readme.splitlines():
        match = re.match(r"\| `--(\w+)`(?:, `--[\w-]+`)* \| (.*?) \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    for field in config_fields():
        default = "—" if field.default is None else "off" if field.default is False else f"`{field.default}`"
        assert rows.get(field.name) == default, (field.name, rows.get(field.name), default)


def test_a_hub_id_in_the_local_cache_trains_offline(sd1_model, concept_dir, tmp_path):
    import os

    from helpers import cache_as_hub_repo

    cache = cache_as_hub_repo(sd1_model, tmp_path / "hf-cache", "someone/tiny-sd")
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    args = train_args("someone/tiny-sd", concept_dir, tmp_path / "out", steps=1)
    proc = run_subprocess(args, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert learned(tmp_path / "out")["<cat-toy>"].shape == (1, 32)


def test_written_files_get_normal_permissions(tmp_path):
    import os

    from textinv.atomic import write_text_atomic

    mask = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_variant_and_tokenizer_name_are_honoured(sd1_model, concept_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    variant_dir = tmp_path / "variant-model"
    StableDiffusionPipeline.from_pretrained(sd1_model, safety_checker=None).save_pretrained(variant_dir, variant="fp16")
    assert list((variant_dir / "unet").glob("*.fp16.safetensors"))
    extra = ["--variant", "fp16", "--tokenizer_name", str(sd1_model / "tokenizer")]
    assert run_cli(train_args(variant_dir, concept_dir, tmp_path / "o", *extra, steps=1)) == 0
    assert learned(tmp_path / "o")["<cat-toy>"].shape == (1, 32)


def test_diffusers_resume_at_max_steps_quirk_is_matched(sd1_model, concept_dir, tmp_path):
    """diffusers' test_textual_inversion_checkpointing_checkpoints_total_limit_removes_multiple_checkpoints."""
    out = tmp_path / "quirk"
    base = train_args(sd1_model, concept_dir, out, "--checkpointing_steps=1", steps=2)
    assert run_cli(base) == 0
    assert {x for x in (p.name for p in out.iterdir()) if "checkpoint" in x} == {"checkpoint-1", "checkpoint-2"}
    assert run_cli(base + ["--resume_from_checkpoint=checkpoint-2", "--checkpoints_total_limit=2"]) == 0
    assert {x for x in (p.name for p in out.iterdir()) if "checkpoint" in x} == {"checkpoint-2", "checkpoint-3"}


def test_model_recommended_settings_can_differ_per_learnable_property(
    sd1_model, concept_dir, tmp_path, monkeypatch, caplog
):
    """A model's textinv.json may recommend other settings for style concepts than for objects (the toy
    model does: a style needs a higher learning rate); flags the user gives still win; a misspelt
    setting is reported, not silently dropped."""
    import json
    import shutil

    import textinv.models

    toy = tmp_path / "toy-model"
    shutil.copytree(sd1_model, toy)
    train = {
        "resolution": 32,
        "train_batch_size": 2,
        "max_train_steps": 2,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        "report_to": "none",
        "checkpointing_steps": 1,
        "lerning_rate": 9.0,
        "by_property": {"style": {"learning_rate": 7e-3, "max_train_steps": 3}},
    }
    (toy / "textinv.json").write_text(json.dumps({"train": train}))
    monkeypatch.setattr(textinv.models, "TOY_MODEL_DIR", toy)
    source = textinv.models.resolve_model_source(None)
    assert textinv.models.model_defaults(source, "train")["learning_rate"] == 1e-3
    assert "by_property" not in textinv.models.model_defaults(source, "train", "style")

    def run(out, *extra):
        args = ["train", "--train_data_dir", str(concept_dir), "--placeholder_token", "<c>"]
        args += ["--initializer_token", "toy", "--seed", "0", "--output_dir", str(out), *extra]
        assert run_cli(args) == 0
        last = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
        scheduler = torch.load(last / "scheduler.pt", weights_only=True)
        return int(last.name.split("-")[1]), scheduler["base_lrs"][0]

    assert run(tmp_path / "object") == (2, 1e-3)
    assert "ignoring unknown train setting 'lerning_rate'" in caplog.text
    assert run(tmp_path / "style", "--learnable_property", "style") == (3, 7e-3)
    assert run(tmp_path / "mine", "--learnable_property", "style", "--learning_rate", "2e-3") == (3, 2e-3)


def test_a_malformed_by_property_section_is_a_one_line_error(sd1_model, concept_dir, tmp_path):
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(sd1_model, model)
    (model / "textinv.json").write_text(json.dumps({"train": {"by_property": {"style": 0.01}}}))
    args = ["train", "--pretrained_model_name_or_path", model, "--train_data_dir", concept_dir]
    args += ["--placeholder_token", "<c>", "--initializer_token", "toy", "--output_dir", tmp_path / "out"]
    done = run_subprocess(args)
    assert done.returncode != 0
    assert "by_property" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_fp8_base_trains_the_same_with_gradient_checkpointing(sd1_model, concept_dir, tmp_path):
    """Recomputing activations goes through the fp8 layers again: same embedding as without."""
    from helpers import learned, run_cli, train_args

    runs = {}
    for name, extra in (("plain", []), ("checkpointed", ["--gradient_checkpointing"])):
        out = tmp_path / name
        assert run_cli(train_args(sd1_model, concept_dir, out, "--fp8_base", *extra, steps=3)) == 0
        runs[name] = learned(out)["<cat-toy>"]
    assert torch.allclose(runs["plain"], runs["checkpointed"], rtol=1e-5, atol=1e-6)
