"""`textinv generate` as a user runs it, and the small `textinv.sample` API the trainer calls."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.cli import main
from textinv.embeddings import save_a1111_embedding, save_diffusers_embedding
from textinv.sample import infotext, make_grid

DIM = 32


def _vec(n, dim=DIM, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * 0.3


def parse_a1111_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """AUTOMATIC1111's reading of a `parameters` chunk: prompt, negative prompt, last-line key: value pairs."""
    *head, last = text.strip().split("\n")
    prompt_lines, negative = [], ""
    for line in head:
        if line.startswith("Negative prompt:"):
            negative = line[len("Negative prompt:") :].strip()
        else:
            prompt_lines.append(line)
    pairs = re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', last)
    fields = {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}
    return "\n".join(prompt_lines), negative, fields


def test_generate_writes_pngs_grid_and_a1111_parameters(sd1_model, tmp_path, capsys):
    save_diffusers_embedding(tmp_path / "toy.safetensors", "<cat-toy>", _vec(2))
    save_a1111_embedding(tmp_path / "style.pt", "<wavy>", _vec(1, seed=1))
    out = tmp_path / "out"
    argv = ["generate", "a <cat-toy> backpack, in <wavy> style", "--model", str(sd1_model),
            "--concept", str(tmp_path / "toy.safetensors"), "--concept", str(tmp_path / "style.pt"),
            "-n", "3", "--steps", "2", "--guidance", "6", "--seed", "11", "--scheduler", "euler",
            "--negative", "blurry, dark", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    singles = sorted(out.glob("0*.png"))
    assert [p.name for p in singles] == ["0000-seed11.png", "0001-seed12.png", "0002-seed13.png"]
    grid = Image.open(out / "grid-0000.png")
    assert grid.size == (2 * 32, 2 * 32)  # near-square: 3 images in 2 x 2
    for i, path in enumerate(singles):
        image = Image.open(path)
        assert image.size == (32, 32) and image.mode == "RGB"
        prompt, negative, fields = parse_a1111_infotext(image.text["parameters"])
        assert prompt == "a <cat-toy> backpack, in <wavy> style" and negative == "blurry, dark"
        assert fields["Seed"] == str(11 + i) and fields["Steps"] == "2" and fields["CFG scale"] == "6"
        assert fields["Sampler"] == "Euler" and fields["Size"] == "32x32"
        assert fields["Textual inversion"] == "<cat-toy>, <wavy>"
    assert "wrote 3 images" in capsys.readouterr().out


def test_same_seed_same_image_and_seed_i_reproduces_image_i(sd1_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    from textinv.sample import generate_images

    pipe = StableDiffusionPipeline.from_pretrained(sd1_model, safety_checker=None, requires_safety_checker=False)
    kwargs = dict(num_inference_steps=2, guidance_scale=5.0)
    batch = generate_images(pipe, "a photo", num_images=2, seed=4, progress=False, **kwargs)
    again = generate_images(pipe, "a photo", num_images=1, seed=5, progress=False, **kwargs)
    # Batched and single runs use different kernels (and thread splits), so they agree to rounding,
    # not bitwise: within 2/255 per pixel, while different seeds differ by far more.
    single, second, first = (np.asarray(im, dtype=np.int16) for im in (again[0], batch[1], batch[0]))
    assert np.abs(single - second).max() <= 2
    assert np.abs(first - second).mean() > 10 * max(np.abs(single - second).mean(), 0.1)
    seen = []
    generate_images(pipe, "a photo", num_images=2, seed=0, progress=seen.append, scheduler="ddim", **kwargs)
    assert seen == [2, 4]  # 2 images x 2 steps, reported as they happen


def test_generate_defaults_to_the_toy_model_and_its_textinv_json(sd1_model, tmp_path, monkeypatch):
    import textinv.models

    toy = tmp_path / "toy-model"
    shutil.copytree(sd1_model, toy)
    (toy / "textinv.json").write_text(
        json.dumps(
            {
                "generate": {
                    "num_inference_steps": 3,
                    "guidance_scale": 2.5,
                    "scheduler": "ddim",
                    "height": 40,
                    "width": 48,
                    "skip_early_cfg": 0.4,
                }
            }
        )  # fmt: skip
    )
    monkeypatch.setattr(textinv.models, "TOY_MODEL_DIR", toy)
    out = tmp_path / "out"
    assert main(["generate", "a cube", "-n", "1", "--out", str(out), "--quiet"]) == 0
    image = Image.open(out / "0000-seed0.png")
    _, _, fields = parse_a1111_infotext(image.text["parameters"])
    assert (fields["Steps"], fields["CFG scale"], fields["Sampler"], fields["Size"]) == ("3", "2.5", "DDIM", "48x40")
    assert fields["Model"] == "textinv-toy" and image.size == (48, 40)
    assert fields["Skip Early CFG"] == "0.4"  # AUTOMATIC1111's key for the same setting
    # flags the user gives win over the model's recommendations
    assert main(["generate", "a cube", "-n", "1", "--steps", "1", "--out", str(out), "--quiet"]) == 0
    _, _, fields = parse_a1111_infotext(Image.open(out / "0001-seed0.png").text["parameters"])
    assert fields["Steps"] == "1"


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--dtype", "float16", "--device", "cpu"], "float16 needs a GPU"),
        (["--concept", "WRONG768"], "sd1 (768)"),
        (["--concept", "nowhere/missing.safetensors"], "not found"),
        (["--height", "30"], "multiples of 8"),
        (["--skip-early-cfg", "1.5"], "fraction of the steps"),
    ],
)
def test_generate_bad_input_is_one_line_exit_2(sd1_model, tmp_path, capsys, extra, expected):
    save_diffusers_embedding(tmp_path / "wrong.safetensors", "<w>", _vec(1, 768))
    extra = [str(tmp_path / "wrong.safetensors") if a == "WRONG768" else a for a in extra]
    argv = ["generate", "a <w>", "--model", str(sd1_model), "-n", "1", "--steps", "1", "--quiet",
            "--out", str(tmp_path / "o"), *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("textinv: error:") and "\n" not in err and expected in err, err


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("skip_early_cfg", 1.5, "a fraction of the steps, 0 to 1"),
        ("scheduler", "warp-drive", "one of dpm,"),
        ("num_inference_steps", 0, "an integer >= 1"),
        ("height", 30, "a multiple of 8"),
        ("guidance_scale", "high", "a number >= 0"),
    ],
)
def test_a_bad_recipe_in_the_models_textinv_json_is_one_line_naming_file_and_key(
    sd1_model, tmp_path, capsys, key, value, expected
):
    model = tmp_path / "model"
    shutil.copytree(sd1_model, model)
    (model / "textinv.json").write_text(json.dumps({"generate": {key: value}}))
    assert main(["generate", "a cube", "--model", str(model), "-n", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert f'textinv.json: "generate.{key}" must be {expected}' in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_recipe_overrides_skip_unset_flags_and_unknown_keys_are_reported(caplog):
    from textinv.sample import SamplingRecipe, recipe_from_settings

    base = SamplingRecipe(num_inference_steps=25, scheduler="dpm")
    recipe = recipe_from_settings({"guidance_scale": 3, "guidence_scale": 9}, "m/textinv.json", base)
    assert (recipe.num_inference_steps, recipe.guidance_scale, recipe.scheduler) == (25, 3, "dpm")
    assert "ignoring unknown generate setting 'guidence_scale'" in caplog.text
    flags = recipe.with_overrides(num_inference_steps=None, guidance_scale=6.0, skip_early_cfg=0.0)
    assert (flags.num_inference_steps, flags.guidance_scale, flags.skip_early_cfg) == (25, 6.0, 0.0)


def test_infotext_matches_a1111_layout():
    text = infotext("a <x>, b", seed=3, steps=20, guidance_scale=7.0, width=512, height=768, sampler="DPM++ 2M",
                    negative_prompt="ugly", model="v1-5", concepts=["<x>"])  # fmt: skip
    lines = text.split("\n")
    assert lines[0] == "a <x>, b" and lines[1] == "Negative prompt: ugly"
    assert lines[2].startswith("Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 3, Size: 512x768, Model: v1-5")
    assert "Negative prompt" not in infotext("p", seed=0, steps=1, guidance_scale=1, width=8, height=8, sampler="DDIM")


def test_grid_tiles_row_by_row():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (200, 200, 0)]
    grid = make_grid([Image.new("RGB", (4, 6), c) for c in colours])
    assert grid.size == (3 * 4, 2 * 6)
    assert grid.getpixel((0, 0)) == colours[0] and grid.getpixel((8, 0)) == colours[2]
    assert grid.getpixel((4, 6)) == colours[4] and grid.getpixel((8, 6)) == (255, 255, 255)


def test_pipelines_load_in_the_asked_dtype_without_diffusers_deprecation_warnings(sd1_model):
    """Loading passes the dtype under the keyword this diffusers takes (`dtype` since it deprecated
    `torch_dtype`), so users see no deprecation warning from our own calls."""
    import warnings

    from textinv.models import load_pipeline, resolve_model_source

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = load_pipeline(resolve_model_source(str(sd1_model)), torch_dtype=torch.float16)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.float16
    assert not [w for w in caught if "torch_dtype" in str(w.message)], [str(w.message) for w in caught]


def test_unguided_steps_follow_a1111s_skip_early_cfg_rule():
    from textinv.sample import unguided_step

    assert [unguided_step(i, 25, 0.36) for i in range(25)] == [True] * 10 + [False] * 15  # i / 25 <= 0.36
    assert not any(unguided_step(i, 25, 0.0) for i in range(25))
    assert all(unguided_step(i, 25, 1.0) for i in range(25))


def test_skip_early_cfg_samples_the_early_steps_without_guidance(sd1_model, monkeypatch):
    """Skipping every step equals sampling at guidance 1; skipping some differs from both ends. An unguided
    step runs the UNet on the prompt's half of the batch only, and the pipeline's UNet is left as it was."""
    from diffusers import StableDiffusionPipeline

    from textinv.sample import generate_images

    pipe = StableDiffusionPipeline.from_pretrained(sd1_model, safety_checker=None, requires_safety_checker=False)
    scales = []
    real_unet_forward = pipe.unet.forward

    def unet_forward(sample, *args, **kwargs):
        scales.append((pipe.guidance_scale, sample.shape[0], kwargs["encoder_hidden_states"].shape[0]))
        return real_unet_forward(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", unet_forward)

    def draw(guidance, skip):
        scales.clear()
        kwargs = dict(num_inference_steps=4, seed=2, progress=False, scheduler="ddim")
        image = generate_images(pipe, "a photo", guidance_scale=guidance, skip_early_cfg=skip, **kwargs)[0]
        return np.asarray(image, dtype=np.int16), list(scales)

    plain, _ = draw(1.0, 0.0)
    guided, guided_scales = draw(9.0, 0.0)
    skipped_all, _ = draw(9.0, 1.0)
    half, half_scales = draw(9.0, 0.4)  # steps 0 and 1 of 4: i / 4 <= 0.4
    assert guided_scales == [(9.0, 2, 2)] * 4
    assert half_scales[2:] == [(9.0, 2, 2)] * 2
    assert all(s == pytest.approx(1.0) and batch == [1, 1] for s, *batch in half_scales[:2])
    assert np.array_equal(skipped_all, plain)  # the prompt's prediction alone
    assert pipe.unet.forward == unet_forward  # the spy (an instance-level forward) is back in place
    assert np.abs(guided - plain).mean() > 5
    assert np.abs(half - plain).mean() > 1 and np.abs(half - guided).mean() > 1
