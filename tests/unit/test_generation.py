"""`generation.generate`: one call of `textinv generate` as a library function (the CLI and the UI share it)."""

from __future__ import annotations

from helpers import run_cli
from PIL import Image

from textinv.generation import GenerationRequest, generate, image_number, next_image_number
from textinv.toy.judge import image_files


def _request(model, out, **extra) -> GenerationRequest:
    base = dict(prompts=("a photo",), model=str(model), num_images=2, steps=1, out_dir=out)
    return GenerationRequest(**{**base, **extra})


def test_a_second_call_continues_the_numbering_and_overwrites_nothing(sd1_model, tmp_path):
    out = tmp_path / "shots"
    first = generate(_request(sd1_model, out), progress=False)
    assert [p.name for p in first.images] == ["0000-seed0.png", "0001-seed1.png"]
    assert (first.first_number, first.last_number, first.grid.name) == (0, 1, "grid-0000.png")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    second = generate(_request(sd1_model, out, prompts=("a cube", "a ball"), seed=5), progress=False)
    assert [p.name for p in second.images] == ["0002-seed5.png", "0003-seed6.png", "0004-seed5.png", "0005-seed6.png"]
    assert (second.first_number, second.last_number, second.grid.name) == (2, 5, "grid-0002.png")
    assert all((out / name).read_bytes() == data for name, data in before.items())
    # each call's images can be picked out alone (what `textinv toy score --numbers` scores); grids never count
    assert image_files(out, (2, 5)) == list(second.images)
    assert image_files(out) == sorted(first.images + second.images)


def test_the_grid_is_near_square(sd1_model, tmp_path):
    result = generate(_request(sd1_model, tmp_path / "g", num_images=4, prompts=("a", "b")), progress=False)
    assert Image.open(result.grid).size == (3 * 32, 3 * 32)  # 8 images: 3 x 3, as A1111's round(sqrt(8)) rows


def test_the_model_is_named_in_the_infotext_never_by_its_path(sd1_model, tmp_path):
    result = generate(_request(sd1_model, tmp_path / "m", num_images=1), progress=False)
    text = Image.open(result.images[0]).text["parameters"]
    assert "Model: tiny-sd1," in text and str(sd1_model.parent) not in text


def test_numbering_reads_leading_numbers_as_a1111_does(tmp_path):
    assert next_image_number(tmp_path / "missing") == 0
    for name in ("0003-seed1.png", "grid-0007.png", "notes.txt", "00011-42-a cat.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_image_number(tmp_path) == 12
    assert (image_number(tmp_path / "0003-seed1.png"), image_number(tmp_path / "grid-0007.png")) == (3, None)


def test_the_cli_reports_the_calls_numbers_and_how_to_score_them_alone(sd1_model, tmp_path, capsys):
    out = tmp_path / "shots"
    argv = ["generate", "a photo", "--model", sd1_model, "-n", "2", "--steps", "1", "--out", out, "--quiet"]
    assert run_cli(argv) == 0 and run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "numbers 0-1" in printed and "numbers 2-3" in printed
    assert f"textinv toy score {out} --numbers 2-3" in printed


def test_an_a1111_file_is_triggered_by_its_file_name_as_in_a1111(sd1_model, tmp_path, caplog):
    import torch

    from textinv.embeddings import save_diffusers_embedding

    folder = tmp_path / "out"
    save_diffusers_embedding(folder / "learned_embeds.safetensors", "<my-star>", torch.randn(1, 32) * 0.3)
    assert run_cli(["convert", folder, tmp_path / "my-star.pt", "--to", "a1111"]) == 0
    concept = str(tmp_path / "my-star.pt")
    one = dict(num_images=1, concepts=(concept,))
    with caplog.at_level("WARNING"):
        result = generate(_request(sd1_model, tmp_path / "a", prompts=("a my-star",), **one), progress=False)
    assert "no prompt mentions" not in caplog.text
    assert "Textual inversion: my-star," in Image.open(result.images[0]).text["parameters"]
    # the token stored inside still works, as diffusers' loader names it
    result = generate(_request(sd1_model, tmp_path / "b", prompts=("a <my-star>",), **one), progress=False)
    assert "Textual inversion: <my-star>," in Image.open(result.images[0]).text["parameters"]


def test_bf16_on_the_cpu_casts_the_weights_a_tensor_at_a_time(sd1_model, tmp_path, monkeypatch):
    """`--dtype bfloat16` on a CPU loads as training does (`weight_cast`), not with the whole fp32 file resident."""
    import torch

    import textinv.weight_cast

    casts = []
    real = textinv.weight_cast.cast_frozen_weights
    monkeypatch.setattr(
        textinv.weight_cast, "cast_frozen_weights", lambda modules, dtype: casts.append(dtype) or real(modules, dtype)
    )
    result = generate(_request(sd1_model, tmp_path / "b", num_images=1, dtype="bfloat16"), progress=False)
    assert casts == [torch.bfloat16] and len(result.images) == 1
