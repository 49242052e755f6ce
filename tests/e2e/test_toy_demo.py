"""The demo loop's plumbing (train -> generate -> score -> grid), on a tiny random pipeline for speed."""

from __future__ import annotations

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
