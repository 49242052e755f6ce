"""Images of the shapes world that show no clear concept: what the judge must answer "unclear" to.

Why: a judge trained on clean shapes only has to pick one of its classes, so a pink blob read as a
star and a deformed yellow blob as an orange star, and failed samples counted as successes. The
judge is also trained on these (toy/judge.py), labelled "unclear" on the attribute they spoil:

- distorted: the shape warped by a strong smooth displacement, or a random blob   -> shape unclear
- blurred:   a Gaussian blur far beyond a diffusion sample's softness (σ 3-4.5 px) -> shape unclear
- merged:    two different shapes overlapping (in two colours half the time)       -> shape (and colour)
- partial:   half the shape cut off by the frame or covered by background          -> shape unclear
- blend:     a clean shape in a colour between two named ones, far from all of them -> colour unclear

Everything is deterministic from a seed, as the world is.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from textinv.toy import world

KINDS = ("distorted", "blurred", "merged", "partial", "blend")
UNCLEAR = "unclear"
_SS = world.IMAGE_SIZE * 4  # the world's supersampled canvas
# A blend must be this far (RGB distance) from every named colour, beyond the world's ±12 jitter per channel.
_BLEND_MARGIN = 60.0


@dataclass(frozen=True)
class UnclearImage:
    """One unclear image, its labels (a world name or "unclear") and what it was made from."""

    image: Image.Image
    kind: str
    shape: str  # world shape or "unclear"
    colour: str  # world colour or "unclear"
    background: str
    sources: tuple[tuple[str, str], ...]  # (colour, shape) of what was drawn: a match to any of them would flatter


def _rgb_distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return math.dist(a, b)


def _warped(mask: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    """Move every pixel of `mask` by a smooth random field of about `strength` canvas pixels."""
    arr = np.asarray(mask)
    fields = []
    for _ in range(2):
        coarse = np.array([[rng.uniform(-1, 1) for _ in range(4)] for _ in range(4)], dtype=np.float32)
        fine = Image.fromarray(coarse).resize((_SS, _SS), Image.Resampling.BICUBIC)
        fields.append(np.asarray(fine) * strength)
    ys, xs = np.mgrid[0:_SS, 0:_SS]
    sy = np.clip(np.rint(ys + fields[0]), 0, _SS - 1).astype(int)
    sx = np.clip(np.rint(xs + fields[1]), 0, _SS - 1).astype(int)
    return Image.fromarray(arr[sy, sx])


def _blob(scene: world.Scene, rng: random.Random) -> Image.Image:
    """A random lumpy closed outline the size of the scene's shape: no shape of the world."""
    mask = Image.new("L", (_SS, _SS), 0)
    r, cx, cy = scene.size * 2, scene.cx * 4, scene.cy * 4  # radius on the 4x canvas
    lobes = [(k, rng.uniform(0.08, 0.22), rng.uniform(0, 2 * math.pi)) for k in (2, 3)]
    points = []
    for i in range(64):
        t = 2 * math.pi * i / 64
        rad = r * (1 + sum(a * math.cos(k * t + p) for k, a, p in lobes))
        points.append((cx + rad * math.cos(t), cy + rad * math.sin(t)))
    ImageDraw.Draw(mask).polygon(points, fill=255)
    return mask


def distorted(rng: random.Random) -> UnclearImage:
    scene = world.random_scene(rng)
    if rng.random() < 0.5:
        mask = _blob(scene, rng)
    else:
        mask = _warped(world.shape_mask(scene), rng, strength=scene.size * 4 * rng.uniform(0.22, 0.4))
    image = world.compose(scene.background, [(world.shape_colour(scene), mask)])
    return UnclearImage(image, "distorted", UNCLEAR, scene.colour, scene.background, ((scene.colour, scene.shape),))


def blurred(rng: random.Random) -> UnclearImage:
    scene = world.random_scene(rng)
    image = world.render(scene).filter(ImageFilter.GaussianBlur(rng.uniform(3.0, 4.5)))
    return UnclearImage(image, "blurred", UNCLEAR, scene.colour, scene.background, ((scene.colour, scene.shape),))


def merged(rng: random.Random) -> UnclearImage:
    first = world.random_scene(rng)
    shape = rng.choice([s for s in world.SHAPES if s != first.shape])
    colour = first.colour if rng.random() < 0.5 else None
    second = world.random_scene(rng, shape, colour, first.background)
    # Two overlapping shapes, each a little smaller, their centres 6-10 px apart in a random direction.
    a, d = rng.uniform(0, 2 * math.pi), rng.uniform(6.0, 10.0)
    c = world.IMAGE_SIZE / 2
    first = replace(first, size=first.size * 0.8, cx=c + d / 2 * math.cos(a), cy=c + d / 2 * math.sin(a))
    second = replace(second, size=second.size * 0.8, cx=c - d / 2 * math.cos(a), cy=c - d / 2 * math.sin(a))
    layers = [(world.shape_colour(s), world.shape_mask(s)) for s in (first, second)]
    image = world.compose(first.background, layers)
    colour_label = first.colour if second.colour == first.colour else UNCLEAR
    sources = ((first.colour, first.shape), (second.colour, second.shape))
    return UnclearImage(image, "merged", UNCLEAR, colour_label, first.background, sources)


def partial(rng: random.Random) -> UnclearImage:
    scene = world.random_scene(rng)
    mask = world.shape_mask(scene)
    if rng.random() < 0.5:
        # Cut off by the frame: the centre moved toward an edge until about half the shape is outside.
        a = rng.choice((0.0, 0.5, 1.0, 1.5)) * math.pi + rng.uniform(-0.3, 0.3)
        shift = world.IMAGE_SIZE / 2 * rng.uniform(0.95, 1.15)
        scene = replace(scene, cx=scene.cx + shift * math.cos(a), cy=scene.cy + shift * math.sin(a))
        mask = world.shape_mask(scene)
    else:
        # Covered by a band of background through the middle: the shape's two ends remain.
        cover = Image.new("L", (_SS, _SS), 0)
        w = scene.size * 4 * rng.uniform(0.4, 0.55)
        cx, cy, a = scene.cx * 4, scene.cy * 4, rng.uniform(0, math.pi)
        dx, dy = math.cos(a), math.sin(a)
        length = _SS
        corners = [(cx + s * length * dx + t * w / 2 * -dy, cy + s * length * dy + t * w / 2 * dx)
                   for s, t in ((-1, -1), (1, -1), (1, 1), (-1, 1))]  # fmt: skip
        ImageDraw.Draw(cover).polygon(corners, fill=255)
        mask = Image.fromarray(np.minimum(np.asarray(mask), 255 - np.asarray(cover)))
    image = world.compose(scene.background, [(world.shape_colour(scene), mask)])
    return UnclearImage(image, "partial", UNCLEAR, scene.colour, scene.background, ((scene.colour, scene.shape),))


def blend_colour(rng: random.Random, background: str) -> tuple[tuple[int, int, int], tuple[str, str]]:
    """An RGB between two named colours, far from every named colour and from the background."""
    names = list(world.COLOURS)
    bg = world.BACKGROUNDS[background]
    while True:
        a, b = rng.sample(names, 2)
        t = rng.uniform(0.3, 0.7)
        rgb = tuple(round(x + (y - x) * t) for x, y in zip(world.COLOURS[a], world.COLOURS[b], strict=True))
        near_named = min(_rgb_distance(rgb, c) for c in world.COLOURS.values())
        near_bg = min(_rgb_distance(rgb, c) for c in bg)
        if near_named >= _BLEND_MARGIN and near_bg >= _BLEND_MARGIN:
            return rgb, (a, b)


def blend(rng: random.Random) -> UnclearImage:
    scene = world.random_scene(rng)
    rgb, (a, b) = blend_colour(rng, scene.background)
    jittered = tuple(max(0, min(255, c + d)) for c, d in zip(rgb, scene.jitter, strict=True))
    image = world.compose(scene.background, [(jittered, world.shape_mask(scene))])
    return UnclearImage(image, "blend", scene.shape, UNCLEAR, scene.background, ((a, scene.shape), (b, scene.shape)))


_MAKERS = {"distorted": distorted, "blurred": blurred, "merged": merged, "partial": partial, "blend": blend}


def images(kind: str, n: int, seed: int) -> Iterator[UnclearImage]:
    """`n` unclear images of one kind, deterministic from `seed`."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    rng = random.Random(f"{kind}-{seed}")
    for _ in range(n):
        yield _MAKERS[kind](rng)
