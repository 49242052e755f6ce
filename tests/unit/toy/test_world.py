"""The shapes world: deterministic from a seed, every concept drawable, captions that cover the templates."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from textinv.cli import main
from textinv.errors import TextinvError
from textinv.toy import world


def _pixels(paths) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in paths]


def test_same_seed_same_images_and_captions():
    a = list(world.scenes(20, seed=3))
    b = list(world.scenes(20, seed=3))
    assert a == b
    pairs = zip(a, b, strict=True)
    assert all(np.array_equal(np.asarray(world.render(x)), np.asarray(world.render(y))) for x, y in pairs)
    assert [s.caption(random.Random(1)) for s in a] == [s.caption(random.Random(1)) for s in b]
    assert list(world.scenes(20, seed=4)) != a


def test_every_shape_colour_and_background_renders_32px_rgb():
    rng = random.Random(0)
    for shape in world.SHAPES:
        for background in world.BACKGROUNDS:
            colour = rng.choice([c for c in world.COLOURS if world.allowed(c, background)])
            img = world.render(world.random_scene(rng, shape, colour, background))
            assert img.size == (32, 32) and img.mode == "RGB"
            # The shape is visible: its colour differs from the background somewhere.
            assert np.asarray(img).std() > 5


def test_a_shape_is_never_drawn_in_its_background_colour():
    for scene in world.scenes(500, seed=1):
        assert world.allowed(scene.colour, scene.background)
    with pytest.raises(TextinvError, match="invisible"):
        world.write_concept_images("blue star", "/tmp/never", 1, background="blue")


def test_captions_name_shape_and_vary_colour_background_and_templates():
    rng = random.Random(0)
    scenes = list(world.scenes(400, seed=0))
    captions = [s.caption(rng) for s in scenes]
    assert any(c.startswith("a photo of a") for c in captions)
    assert any("in the style of" in c for c in captions)
    assert any("background" in c for c in captions)
    # Shape-only captions exist for many colours: the shape word alone must not imply a colour.
    shape_only = {
        s.colour
        for s, c in zip(scenes, captions, strict=True)
        if s.shape in c and s.colour not in c and "style" not in c
    }
    assert len(shape_only) >= 8
    for s, c in zip(scenes, captions, strict=True):
        assert s.shape in c or s.background in c


def test_parse_concept_accepts_colour_shape_and_rejects_others():
    assert world.parse_concept("Orange Star") == ("orange", "star")
    assert world.parse_concept("heart") == (None, "heart")
    with pytest.raises(TextinvError, match="not a concept"):
        world.parse_concept("teal hexagon")


def test_toy_images_command_writes_unnamed_deterministic_files(tmp_path, capsys):
    assert main(["toy", "images", "green heart", "-n", "3", "--out", str(tmp_path / "a"), "--seed", "7"]) == 0
    assert main(["toy", "images", "green heart", "-n", "3", "--out", str(tmp_path / "b"), "--seed", "7"]) == 0
    a, b = sorted((tmp_path / "a").glob("*.png")), sorted((tmp_path / "b").glob("*.png"))
    assert [p.name for p in a] == ["img_00.png", "img_01.png", "img_02.png"]
    assert all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(b), strict=True))
    assert len({x.tobytes() for x in _pixels(a)}) == 3


def test_toy_images_command_writes_captions_naming_what_is_not_the_concept(tmp_path, capsys):
    assert (
        main(["toy", "images", "green heart", "-n", "3", "--out", str(tmp_path / "obj"), "--background", "black"]) == 0
    )
    assert "with captions" in capsys.readouterr().out
    assert [(tmp_path / "obj" / f"img_{i:02d}.txt").read_text() for i in range(3)] == ["on a black background\n"] * 3
    assert main(["toy", "images", "striped", "-n", "2", "--out", str(tmp_path / "style")]) == 0
    captions = [(tmp_path / "style" / f"img_{i:02d}.txt").read_text().split() for i in range(2)]
    assert all(len(c) == 3 and c[0] == "a" and c[1] in world.COLOURS and c[2] in world.SHAPES for c in captions)
    assert main(["toy", "images", "green heart", "-n", "2", "--out", str(tmp_path / "bare"), "--no-captions"]) == 0
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["img_00.png", "img_01.png"]


def test_toy_images_style_concept_shares_background_across_shapes(tmp_path):
    paths = world.write_concept_images("checkered", tmp_path, 5)
    assert len(paths) == 5
    corners = {tuple(np.asarray(Image.open(p))[0, 0]) for p in paths}
    assert len(corners) <= 2  # the same texture in every image


def test_toy_list_json(capsys):
    assert main(["toy", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "shapes": list(world.SHAPES),
        "colours": list(world.COLOURS),
        "backgrounds": list(world.BACKGROUNDS),
    }
    assert len(data["shapes"]) == 8 and len(data["colours"]) == 10 and len(data["backgrounds"]) == 5


def test_toy_images_unknown_concept_is_a_one_line_error(tmp_path, capsys):
    assert main(["toy", "images", "teal hexagon", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textinv: error:") and len(err.strip().splitlines()) == 1
