"""The demo loop's plumbing (train -> generate -> score -> grid), on a tiny random pipeline for speed."""

from __future__ import annotations

import json

from PIL import Image

from textinv.toy import demo, world


def test_demo_writes_grid_images_and_scores(sd1_model, tmp_path):
    messages = []
    result = demo.run_demo(
        "orange star",
        tmp_path / "demo",
        num_images=2,
        report=messages.append,
        model=str(sd1_model),
        train_overrides={"max_train_steps": 2, "resolution": 32, "train_batch_size": 1, "report_to": "none"},
        sample_overrides={"num_inference_steps": 2},
    )
    assert result["steps"] == 2
    for key in ("baseline", "learned"):
        assert set(result[key]) == {"match", "shape", "colour", "unclear", "n"} and result[key]["n"] == 2
        assert len(list((tmp_path / "demo" / key).glob("*.png"))) == 2
    grid = Image.open(result["grid"])
    # Three titled panels: 5 training images (2 columns of 4 rows) | 2 baseline | 2 learned.
    assert grid.height == 16 + 4 * world.IMAGE_SIZE * 3
    assert len(list((tmp_path / "demo" / "concept").glob("img_*.png"))) == 5
    assert any("5 images of an orange star" in m for m in messages), messages


def test_side_by_side_places_titled_panels():
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    grid = demo.side_by_side([("a", [red] * 5), ("b", [red])], scale=1, rows=4)
    assert grid.size == (2 * 32 + 8 + 32, 16 + 4 * 32)


def test_the_shipped_fp16_toy_model_loads_in_float32_for_cpu_sampling():
    import torch

    pipe = demo.toy_pipeline()
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    image = pipe("a red star", num_inference_steps=2, height=32, width=32, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


def test_demo_family_sdxl_runs_the_loop_on_the_shipped_sdxl_twin(tmp_path, monkeypatch):
    """`textinv demo --family sdxl`, cut to a few steps: the CLI picks the twin, the loop trains both encoders' rows,
    generates through StableDiffusionXLPipeline and scores."""
    from helpers import run_cli

    from textinv.models import toy_model_dir
    from textinv.toy import demo as demo_module

    real = demo_module.run_demo
    seen = {}

    def short(concept, out_dir, **kwargs):
        seen.update(kwargs)
        kwargs.update(train_overrides={"max_train_steps": 3}, sample_overrides={"num_inference_steps": 2})
        return real(concept, out_dir, **kwargs)

    monkeypatch.setattr(demo_module, "run_demo", short)
    out = tmp_path / "demo"
    assert run_cli(["demo", "--family", "sdxl", "--concept", "green heart", "-n", "2", "--out", out]) == 0
    assert seen["model"] == str(toy_model_dir("sdxl"))
    scores = json.loads((out / "scores.json").read_text())
    assert scores["steps"] == 3 and scores["learned"]["n"] == 2 and scores["baseline"]["n"] == 2
    written = {f.name for f in (out / "embedding").iterdir()}
    assert {"learned_embeds.safetensors", "learned_embeds_2.safetensors"} <= written
    assert Image.open(scores["grid"]).height == 16 + 4 * world.IMAGE_SIZE * 3
