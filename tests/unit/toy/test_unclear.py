"""Unclear images: deterministic, labelled on the attribute they spoil, and really unlike the world's concepts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from textinv.toy import unclear, world


def _pixels(items) -> list[np.ndarray]:
    return [np.asarray(item.image) for item in items]


@pytest.mark.parametrize("kind", unclear.KINDS)
def test_each_kind_is_deterministic_32px_and_labelled_unclear(kind):
    a, b = list(unclear.images(kind, 6, seed=1)), list(unclear.images(kind, 6, seed=1))
    assert all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(b), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(unclear.images(kind, 6, 2)), strict=True))
    for item in a:
        assert item.image.size == (32, 32) and item.image.mode == "RGB" and item.kind == kind
        assert unclear.UNCLEAR in (item.shape, item.colour)
        assert item.background in world.BACKGROUNDS and item.sources
        assert np.asarray(item.image).std() > 5  # something is drawn


def test_spoiled_attributes_per_kind():
    assert {i.shape for i in unclear.images("blend", 20, 0)} <= set(world.SHAPES)
    assert {i.colour for i in unclear.images("blend", 20, 0)} == {unclear.UNCLEAR}
    for kind in ("distorted", "blurred", "partial"):
        assert {i.shape for i in unclear.images(kind, 20, 0)} == {unclear.UNCLEAR}
        assert {i.colour for i in unclear.images(kind, 20, 0)} <= set(world.COLOURS)
    merges = list(unclear.images("merged", 40, 0))
    for item in merges:
        (c1, s1), (c2, s2) = item.sources
        assert s1 != s2 and item.colour == (c1 if c1 == c2 else unclear.UNCLEAR)
    assert {i.colour for i in merges} & {unclear.UNCLEAR} and {i.colour for i in merges} & set(world.COLOURS)


def test_blend_colours_are_far_from_every_named_colour():
    import random

    rng = random.Random(0)
    for background in world.BACKGROUNDS:
        for _ in range(50):
            rgb, (a, b) = unclear.blend_colour(rng, background)
            assert a != b
            assert min(math.dist(rgb, c) for c in world.COLOURS.values()) >= 60


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        list(unclear.images("smudged", 1, 0))
