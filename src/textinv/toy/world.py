"""The shapes world: procedural 32 px images of one coloured shape on a background, with English captions.

Why: no real Stable Diffusion weights exist here, so the embedded toy model is trained on this world,
and textual inversion on it can be judged by whether the learned concept draws the right shape and colour.
Everything is deterministic from a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from textinv.errors import TextinvError

IMAGE_SIZE = 32
# Shapes are drawn at 4x and downsampled: anti-aliased edges look like a (tiny) rendering, not pixel art.
_SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 20),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "purple": (140, 40, 190),
    "pink": (255, 120, 190),
    "brown": (120, 70, 25),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
# A background is one colour or a two-colour texture; a shape is never drawn in its background's colour.
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "white": ((245, 245, 245), (245, 245, 245)),
    "black": ((20, 20, 20), (20, 20, 20)),
    "blue": ((40, 90, 200), (40, 90, 200)),
    "checkered": ((200, 200, 200), (110, 110, 110)),
    "striped": ((120, 210, 200), (235, 250, 245)),
}
_CLASHES = {"white": {"white"}, "black": {"black"}, "blue": {"blue"}, "checkered": set(), "striped": set()}

# Prompt templates of the diffusers reference trainer and of textinv's (frozen copies, so the recipe
# stays reproducible): the toy text encoder sees them in its captions, so that the prompts textual
# inversion trains with mean something to it.
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}", "a {}", "an image of a {}", "a drawing of a {}",
    "a picture of a {}", "an image of the {}", "the picture of a {}",
)  # fmt: skip
STYLE_TEMPLATES = tuple(
    phrase.format(kind=kind)
    for kind in ("painting", "picture", "rendering", "photo", "drawing")
    for phrase in (
        "a {kind} in the style of {{}}", "the {kind} in the style of {{}}", "a small {kind} in the style of {{}}",
        "a large {kind} in the style of {{}}", "a good {kind} in the style of {{}}",
        "a close-up {kind} in the style of {{}}", "a cropped {kind} in the style of {{}}",
        "a clean {kind} in the style of {{}}", "a dark {kind} in the style of {{}}",
        "a bright {kind} in the style of {{}}", "a nice {kind} in the style of {{}}",
        "a weird {kind} in the style of {{}}", "a cool {kind} in the style of {{}}",
    )
) + ("a rendition in the style of {}",)  # fmt: skip


@dataclass(frozen=True)
class Scene:
    """One image of the world: what is drawn, and where."""

    shape: str
    colour: str
    background: str
    cx: float  # centre, in pixels
    cy: float
    size: float  # diameter of the shape's bounding circle, in pixels
    angle: float  # degrees
    jitter: tuple[int, int, int]  # small per-image colour offset, so colours are not one exact RGB

    def caption(self, rng: random.Random) -> str:
        return caption_for(self, rng)


def allowed(colour: str, background: str) -> bool:
    """Whether a shape of `colour` may be drawn on `background` (never on its own colour)."""
    return colour not in _CLASHES[background]


def parse_concept(text: str) -> tuple[str | None, str]:
    """ "orange star" -> ("orange", "star"); "star" -> (None, "star"). Raises TextinvError otherwise."""
    words = text.strip().lower().split()
    if len(words) == 1 and words[0] in SHAPES:
        return None, words[0]
    if len(words) == 2 and words[0] in COLOURS and words[1] in SHAPES:
        return words[0], words[1]
    raise TextinvError(
        f"{text!r} is not a concept of the shapes world; write 'COLOUR SHAPE' with a colour from "
        f"{', '.join(COLOURS)} and a shape from {', '.join(SHAPES)}"
    )


def check_background(background: str | None) -> None:
    if background is not None and background not in BACKGROUNDS:
        raise TextinvError(f"unknown background {background!r}; use one of {', '.join(BACKGROUNDS)}")


def random_scene(
    rng: random.Random,
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
) -> Scene:
    """A scene with the given attributes fixed and the others (and the placement) drawn from `rng`."""
    shape = shape or rng.choice(SHAPES)
    background = background or rng.choice([b for b in BACKGROUNDS if colour is None or allowed(colour, b)])
    colour = colour or rng.choice([c for c in COLOURS if allowed(c, background)])
    if not allowed(colour, background):
        raise TextinvError(f"a {colour} shape on a {background} background would be invisible; pick another background")
    # Placement varies a little (centre ±2 px, size 20-26 px, ±12°): with shapes anywhere in the frame
    # at any size, a CPU-sized UNet drew blobs (shape read right 13% of the time after 1,200 steps, vs
    # 60% with this placement), and textual inversion has nothing to learn from a blob.
    size = rng.uniform(20.0, 26.0)
    return Scene(
        shape=shape,
        colour=colour,
        background=background,
        cx=IMAGE_SIZE / 2 + rng.uniform(-2.0, 2.0),
        cy=IMAGE_SIZE / 2 + rng.uniform(-2.0, 2.0),
        size=size,
        # Small rotations only: a square turned 45° is a diamond, a cross turned 45° an X.
        angle=rng.uniform(-12.0, 12.0),
        jitter=(rng.randint(-12, 12), rng.randint(-12, 12), rng.randint(-12, 12)),
    )


def _outline(shape: str, r: float) -> list[list[tuple[float, float]]]:
    """Polygons (unit-free, centred on 0, radius r) whose union is the shape; rings are drawn separately."""

    def poly(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
        return [points]

    if shape == "square":
        s = r * 0.72
        return poly([(-s, -s), (s, -s), (s, s), (-s, s)])
    if shape == "diamond":
        return poly([(0, -r), (r * 0.72, 0), (0, r), (-r * 0.72, 0)])
    if shape == "triangle":
        return poly([(0, -r), (r * 0.95, r * 0.7), (-r * 0.95, r * 0.7)])
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a) + r * 0.08))
        return poly(pts)
    if shape == "cross":
        w, h = r * 0.33, r * 0.95
        return [[(-w, -h), (w, -h), (w, h), (-w, h)], [(-h, -w), (h, -w), (h, w), (-h, w)]]
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 16.5, (y + 1.5) * r / 16.5))
        return poly(pts)
    raise ValueError(shape)


def _mask(scene: Scene) -> Image.Image:
    n = IMAGE_SIZE * _SUPERSAMPLE
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = scene.cx * _SUPERSAMPLE, scene.cy * _SUPERSAMPLE, scene.size * _SUPERSAMPLE / 2
    if scene.shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if scene.shape == "ring":
            ri = r * 0.55
            draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
        return mask
    a = math.radians(scene.angle)
    ca, sa = math.cos(a), math.sin(a)
    for points in _outline(scene.shape, r):
        draw.polygon([(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points], fill=255)
    return mask


def _background(name: str) -> Image.Image:
    n = IMAGE_SIZE * _SUPERSAMPLE
    a, b = BACKGROUNDS[name]
    img = Image.new("RGB", (n, n), a)
    draw = ImageDraw.Draw(img)
    if name == "checkered":
        tile = 8 * _SUPERSAMPLE
        for i in range(0, n, tile):
            for j in range(0, n, tile):
                if (i // tile + j // tile) % 2:
                    draw.rectangle((i, j, i + tile - 1, j + tile - 1), fill=b)
    elif name == "striped":
        band = 4 * _SUPERSAMPLE
        for j in range(band, n, 2 * band):
            draw.rectangle((0, j, n - 1, j + band - 1), fill=b)
    return img


def shape_colour(scene: Scene) -> tuple[int, int, int]:
    """The RGB a scene's shape is painted in: its named colour plus the scene's jitter."""
    return tuple(max(0, min(255, c + d)) for c, d in zip(COLOURS[scene.colour], scene.jitter, strict=True))


def shape_mask(scene: Scene) -> Image.Image:
    """The scene's shape as an "L" mask at the supersampled size (what `compose` paints)."""
    return _mask(scene)


def background_image(name: str) -> Image.Image:
    """A background at the supersampled size (what `compose` paints on)."""
    return _background(name)


def compose(background: str, layers: list[tuple[tuple[int, int, int], Image.Image]]) -> Image.Image:
    """Paint (RGB, supersampled mask) layers in order on a background; downsample to 32x32 as `render` does.

    Why public: the judge's "unclear" images (toy/unclear.py) are drawn with the world's own brush.
    """
    img = _background(background)
    for colour, mask in layers:
        img.paste(Image.new("RGB", img.size, colour), (0, 0), mask)
    return img.filter(ImageFilter.BoxBlur(1)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def render(scene: Scene) -> Image.Image:
    """Draw a scene as a 32x32 RGB image."""
    return compose(scene.background, [(shape_colour(scene), _mask(scene))])


def with_article(phrase: str) -> str:
    """'orange star' -> 'an orange star' (captions and messages read as English)."""
    return ("an " if phrase[:1].lower() in set("aeiou") else "a ") + phrase


def caption_for(scene: Scene, rng: random.Random) -> str:
    """A plain-English caption that may leave out the colour or background (then they are unconstrained).

    The mix matters for textual inversion: shape-only captions must cover every colour (so an
    initializer word alone does not know the colour), and template prompts ("a photo of a {}",
    "... in the style of {}") must mean the same as plain ones.
    """
    with_colour = rng.random() < 0.7
    with_background = rng.random() < 0.5
    thing = f"{scene.colour} {scene.shape}" if with_colour else scene.shape
    roll = rng.random()
    if roll < 0.15:
        # Style phrasings: the background is the "style" of the picture.
        if with_background or rng.random() < 0.5:
            return rng.choice(STYLE_TEMPLATES).format(scene.background)
        return f"{with_article(thing)} in the style of {scene.background}"
    if roll < 0.25:
        return f"{with_article(thing)} in the style of {scene.background}"
    base = rng.choice(OBJECT_TEMPLATES).format(thing) if roll < 0.65 else with_article(thing)
    if with_background:
        base += rng.choice((" on a {} background", " on {}", " against a {} background")).format(scene.background)
    return base


def scenes(
    n: int,
    seed: int,
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
) -> Iterator[Scene]:
    """`n` scenes, deterministic from `seed`, with any of shape, colour and background fixed."""
    check_background(background)
    rng = random.Random(seed)
    for _ in range(n):
        yield random_scene(rng, shape, colour, background)


def write_concept_images(
    concept: str,
    out_dir: str | Path,
    n: int = 5,
    *,
    background: str | None = None,
    seed: int = 0,
    captions: bool = False,
) -> list[Path]:
    """Write `n` images of a concept ("green heart", or "striped" for a background style) to `out_dir`.

    File names never name the concept (img_00.png ...): a training set should not leak its label. With
    `captions`, each image gets a caption (img_00.txt) naming what it shows besides the concept, as a user
    captions photos: the background of an object ("on a white background"), the shape of a style ("a red
    circle"); `textinv train` puts it after each prompt, so the new token need not learn it.
    """
    out = Path(out_dir)
    if concept.strip().lower() in BACKGROUNDS:
        if background is not None:
            raise TextinvError("a background concept already fixes the background; drop --background")
        shape, colour, background = None, None, concept.strip().lower()
    else:
        colour, shape = parse_concept(concept)
    check_background(background)
    if colour is not None and background is not None and not allowed(colour, background):
        raise TextinvError(f"a {colour} shape on a {background} background is invisible; pick another")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        # For a style concept, vary the shape from image to image so only the background is shared.
        s = SHAPES[(i + seed) % len(SHAPES)] if shape is None else shape
        path = out / f"img_{i:02d}.png"
        scene = random_scene(rng, s, colour, background)
        render(scene).save(path)
        if captions:
            text = f"a {scene.colour} {scene.shape}" if shape is None else f"on a {scene.background} background"
            path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
        paths.append(path)
    return paths
