"""The data path: image folder → validated RGB pixels → cached VAE posteriors → per-step training samples.

What is sampled at each step (which image, flip, prompt template, latent draw, noise, timestep) is a pure
function of (seed, sample position). That makes a run reproducible, resumable bitwise after a kill,
and identical whether its global batch is split over one process or several.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from textinv.errors import TextinvError

log = logging.getLogger(__name__)

# Image files by name, for listing a folder of pictures (training itself tries every file PIL can open).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# A caption lives beside its image as IMAGE.txt (kohya's and A1111's convention); never warned about as an image.
CAPTION_SUFFIX = ".txt"
NAME_TAG, FILEWORDS_TAG = "[name]", "[filewords]"


def _templates(kinds: list[str], phrases: list[str]) -> list[str]:
    return [p.format(kind=k) for p in phrases for k in kinds]


# Prompt templates in the spirit of the textual-inversion paper: a neutral description with the
# placeholder as the only content word, so the embedding has to carry the concept itself.
OBJECT_TEMPLATES: list[str] = _templates(
    ["photo"],
    [
        "a {kind} of a {{}}",
        "the {kind} of a {{}}",
        "a {kind} of the {{}}",
        "a {kind} of one {{}}",
        "a {kind} of my {{}}",
        "a good {kind} of a {{}}",
        "a close-up {kind} of a {{}}",
        "a cropped {kind} of the {{}}",
        "a bright {kind} of the {{}}",
        "a dark {kind} of the {{}}",
        "a {kind} of a small {{}}",
        "a {kind} of the large {{}}",
        "a {kind} of a nice {{}}",
        "a {kind} of a clean {{}}",
    ],
) + ["a rendering of a {}", "a rendition of the {}", "a picture of a {}", "an image of the {}"]

STYLE_TEMPLATES: list[str] = _templates(
    ["painting", "picture", "rendering"],
    [
        "a {kind} in the style of {{}}",
        "the {kind} in the style of {{}}",
        "a small {kind} in the style of {{}}",
        "a large {kind} in the style of {{}}",
        "a good {kind} in the style of {{}}",
        "a close-up {kind} in the style of {{}}",
    ],
)


def templates_for(learnable_property: str) -> list[str]:
    return STYLE_TEMPLATES if learnable_property == "style" else OBJECT_TEMPLATES


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image (RGBA, P, L, LA, CMYK, 16-bit, 32-bit float, EXIF-rotated) → upright 8-bit RGB.

    Transparency is composited on white, as a user sees it in a viewer; a bare convert("RGB") would
    expose whatever colours hide under transparent pixels.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if image.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_concept_images(folder: str | Path) -> tuple[list[Image.Image], list[Path]]:
    """Read every readable image in `folder` (sorted by name); warn about and skip the rest."""
    folder = Path(folder)
    if not folder.exists():
        raise TextinvError(f"--train_data_dir {folder} does not exist; point it at a folder of 3-5 images")
    if not folder.is_dir():
        raise TextinvError(f"--train_data_dir {folder} is a file, not a folder; put the images in a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise TextinvError(f"--train_data_dir {folder} is empty; put 3-5 .png/.jpg images of the concept there")
    images, used, skipped = [], [], []
    for path in files:
        if path.suffix.lower() == CAPTION_SUFFIX:
            skipped.append(path.name)  # a caption beside its image (IMAGE.txt), not an unreadable image
            continue
        try:
            with Image.open(path) as im:
                im.load()
                images.append(to_rgb(im))
            used.append(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            skipped.append(path.name)
            log.warning("skipping %s: not a readable image (%s)", path, type(exc).__name__)
    if not images:
        raise TextinvError(
            f"no readable image in {folder} (skipped {len(skipped)} file(s): {', '.join(skipped[:5])}); "
            "put 3-5 .png/.jpg images of the concept there"
        )
    return images, used


def preprocess(image: Image.Image, resolution: int, center_crop: bool, flip: bool) -> torch.Tensor:
    """RGB image → [3, res, res] in [-1, 1], as the reference does: optional centre crop, bicubic resize."""
    if center_crop:
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    image = image.resize((resolution, resolution), resample=Image.Resampling.BICUBIC)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(image, dtype=np.uint8).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass
class LatentPosteriors:
    """The VAE posterior (mean, std) of every (image, flip) pair, encoded once.

    The reference VAE-encodes every image on every step. With a fixed resize and crop there are only
    two distinct inputs per image (flipped or not), so we encode each once and keep drawing a fresh
    latent sample from its posterior every step, exactly as the reference's `latent_dist.sample()`.
    Only the flips a run can draw are encoded: with `--flip_p 0` (or 1) one per image.
    """

    mean: torch.Tensor  # [num_images, len(flips), C, h, w]
    std: torch.Tensor
    scaling_factor: float
    flips: tuple[bool, ...] = (False, True)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.mean.shape[2:])  # type: ignore[return-value]

    def sample(self, image_idx: torch.Tensor, flip: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        # With one flip cached, every draw is that flip (flip_p 0 never mirrors, flip_p 1 always does).
        slot = flip.long() if len(self.flips) == 2 else torch.zeros_like(image_idx)
        mean = self.mean[image_idx, slot]
        std = self.std[image_idx, slot]
        return (mean + std * eps.to(mean.device, mean.dtype)) * self.scaling_factor


def flips_drawn(flip_p: float) -> tuple[bool, ...]:
    """Which of (unflipped, flipped) a run mirroring with probability `flip_p` can draw."""
    return tuple(flip for flip, possible in ((False, flip_p < 1), (True, flip_p > 0)) if possible)


@torch.no_grad()
def cache_latent_posteriors(
    vae,
    images: list[Image.Image],
    resolution: int,
    center_crop: bool,
    device,
    dtype,
    flips: tuple[bool, ...] = (False, True),
) -> LatentPosteriors:
    means, stds = [], []
    for image in images:
        pixels = torch.stack([preprocess(image, resolution, center_crop, flip) for flip in flips])
        dist = vae.encode(pixels.to(device, dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return LatentPosteriors(
        mean=torch.stack(means), std=torch.stack(stds), scaling_factor=float(vae.config.scaling_factor), flips=flips
    )


def _mix(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (SeedSequence hashes them)."""
    state = np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(1, np.uint64)[0]
    return int(state) >> 1  # shifted as a Python int: numpy < 2 refuses uint64 >> int


@dataclass
class SampleDraws:
    """Everything random about a batch of training samples."""

    image_idx: torch.Tensor  # [B] long
    flip: torch.Tensor  # [B] bool
    template_idx: torch.Tensor  # [B] long
    latent_eps: torch.Tensor  # [B, C, h, w] standard normal for the posterior sample
    noise: torch.Tensor  # [B, C, h, w]
    timesteps: torch.Tensor  # [B] long


class SampleStream:
    """Counter-based sampling: sample number `p` of the run is drawn from a generator seeded by (seed, p).

    Images follow an epoch-wise shuffle of `num_images * repeats` slots, like the reference's shuffled
    DataLoader; flips are p=`flip_p` (0.5 as in the reference), templates uniform, timesteps uniform in
    [0, num_train_timesteps). Each sample draws the same numbers whatever `flip_p` is, so changing it
    changes only which samples are mirrored.
    """

    def __init__(
        self,
        seed: int,
        num_images: int,
        repeats: int,
        num_templates: int,
        latent_shape: tuple[int, int, int],
        num_train_timesteps: int,
        flip_p: float = 0.5,
    ):
        self.seed = seed
        self.flip_p = flip_p
        self.num_images = num_images
        self.epoch_len = num_images * repeats
        self.num_templates = num_templates
        self.latent_shape = latent_shape
        self.num_train_timesteps = num_train_timesteps
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def _image_at(self, position: int) -> int:
        epoch, slot = divmod(position, self.epoch_len)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, 0xE90C, epoch))
            self._perm = torch.randperm(self.epoch_len, generator=g) % self.num_images
            self._perm_epoch = epoch
        return int(self._perm[slot])

    def draw(self, positions: range | list[int]) -> SampleDraws:
        rows = []
        for p in positions:
            g = torch.Generator().manual_seed(_mix(self.seed, p))
            rows.append(
                (
                    self._image_at(p),
                    bool(torch.rand((), generator=g) < self.flip_p),
                    int(torch.randint(self.num_templates, (), generator=g)),
                    torch.randn(self.latent_shape, generator=g),
                    torch.randn(self.latent_shape, generator=g),
                    int(torch.randint(self.num_train_timesteps, (), generator=g)),
                )
            )
        image_idx, flip, tmpl, eps, noise, t = zip(*rows, strict=True)
        return SampleDraws(
            image_idx=torch.tensor(image_idx, dtype=torch.long),
            flip=torch.tensor(flip, dtype=torch.bool),
            template_idx=torch.tensor(tmpl, dtype=torch.long),
            latent_eps=torch.stack(eps),
            noise=torch.stack(noise),
            timesteps=torch.tensor(t, dtype=torch.long),
        )


def tokenize_templates(tokenizer, templates: list[str], prompt_string: str) -> torch.Tensor:
    """All prompt templates, filled with the placeholder and tokenized once: [num_templates, max_length]."""
    texts = [t.format(prompt_string) for t in templates]
    return tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids


def load_template_file(path: str | Path) -> list[str]:
    """A user's prompt templates, one per line (A1111's format): `[name]` is the concept, `[filewords]` the caption.

    Blank lines are ignored. Every template must contain `[name]`: a prompt without the placeholder
    gives its new rows no gradient, so such a line would only waste steps.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TextinvError(
            f"--template_file {path} does not exist; give a text file with one template per line"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TextinvError(
            f"--template_file {path} is not readable as UTF-8 text ({type(exc).__name__}); "
            "give a text file with one template per line"
        ) from None
    lines = [(number, " ".join(line.split())) for number, line in enumerate(text.splitlines(), start=1)]
    templates = [(number, line) for number, line in lines if line]
    if not templates:
        raise TextinvError(
            f"--template_file {path} is empty; write one prompt template per line, e.g. 'a photo of a {NAME_TAG}'"
        )
    for number, line in templates:
        if NAME_TAG not in line:
            raise TextinvError(
                f"--template_file {path} line {number} ({line!r}) has no {NAME_TAG}; every template needs "
                f"{NAME_TAG} where the concept goes, e.g. 'a photo of a {NAME_TAG}, {FILEWORDS_TAG}'"
            )
    return [line for _, line in templates]


def caption_path(image_path: str | Path) -> Path:
    """Where an image's caption lives: `IMAGE.txt` beside `IMAGE.png`."""
    return Path(image_path).with_suffix(CAPTION_SUFFIX)


def read_captions(image_paths: list[Path]) -> list[str]:
    """The caption of each image (`IMAGE.txt` beside it, whitespace collapsed to one line); "" when it has none."""
    captions = []
    for image_path in image_paths:
        path = caption_path(image_path)
        if not path.exists():
            captions.append("")
            continue
        try:
            captions.append(" ".join(path.read_text(encoding="utf-8-sig").split()))
        except (OSError, UnicodeDecodeError) as exc:
            raise TextinvError(
                f"caption {path} is not readable as UTF-8 text ({type(exc).__name__}); "
                "save it as a UTF-8 text file or remove it"
            ) from None
    return captions


def prompt_table(
    prompt_string: str,
    num_images: int,
    learnable_property: str = "object",
    templates: list[str] | None = None,
    captions: list[str] | None = None,
) -> list[list[str]]:
    """The training prompt texts, `table[image_index][template_index]`.

    Without `templates`: diffusers' templates for `learnable_property`, the same row for every image
    (exactly what training used before captions existed). With them: `[name]` becomes `prompt_string`
    and `[filewords]` that image's caption (empty when it has none).
    """
    if templates is None:
        row = [template.format(prompt_string) for template in templates_for(learnable_property)]
        return [list(row) for _ in range(num_images)]
    captions = captions if captions is not None else [""] * num_images
    if len(captions) != num_images:
        raise ValueError(f"{len(captions)} captions for {num_images} images")
    return [[_fill(t, prompt_string, caption) for t in templates] for caption in captions]


def _fill(template: str, prompt_string: str, caption: str) -> str:
    """One template filled in; an empty caption leaves no dangling comma ('a photo of a <x>, ' → 'a photo of a <x>')."""
    text = template.replace(NAME_TAG, prompt_string)
    if not caption:
        text = re.sub(r"\s*,?\s*" + re.escape(FILEWORDS_TAG), "", text)
    return " ".join(text.replace(FILEWORDS_TAG, caption).split())


def caption_templates(learnable_property: str) -> list[str]:
    """diffusers' templates twice: bare ("a photo of a [name]") and followed by the caption ("... [filewords]").

    Half the prompts name what else the image shows, so the token need not learn it; half do not, so the token
    stands alone in a prompt without that context, as users write them (kohya's caption dropout, at 0.5).
    Measured on the toy model (32 samples): five blue squares on white, "a <x> on a black background" drew
    blue in 38 % without captions, 100 % with the caption in every prompt, 69 % with half; a pink circle
    on varied backgrounds, "a <x> on a blue background" 100 % / 66 % / 91 % and "a photo of a <x>" 91 % /
    81 % / 91 %: captions in every prompt tied the colour to them.
    A space before the caption, not A1111's ", ": the toy model's text encoder never saw a comma, and a pink
    triangle trained with one came out 12 % pink, 100 % without.
    """
    bare = [template.format(NAME_TAG) for template in templates_for(learnable_property)]
    return bare + [template + " " + FILEWORDS_TAG for template in bare]


def shared_caption_templates(learnable_property: str) -> list[str]:
    """diffusers' templates, each followed by the caption: for images whose captions are all the same.

    A caption every image shares names a context common to all of them (five photos on one white table):
    in a bare prompt the token would have to explain that context, and learns it as part of the concept; stated
    in every prompt, the words explain it. Measured on the toy model (`bench/editability.py --seed 23`, 32
    samples): five blue squares on white, "a <x> on a black background" blue in 69 % with the caption in half
    the prompts, 100 % in all. Captions that differ keep the half rule (`caption_templates`): there, the
    varied contexts cannot be learned as the concept, and the bare half keeps the token whole.
    """
    return [template.format(NAME_TAG) + " " + FILEWORDS_TAG for template in templates_for(learnable_property)]


def training_prompts(
    image_paths: list[Path],
    prompt_string: str,
    learnable_property: str,
    template_file: str | None,
    ignore_captions: bool = False,
) -> list[list[str]]:
    """`prompt_table` for a run: `--template_file` and the images' captions when given, else diffusers' templates,
    bare and (when the images have captions) followed by each image's caption: half the prompts carry it, or all
    of them when every image has the same caption (`shared_caption_templates`).

    Why captions by default: a caption names what the image shows besides the concept (its background, for an
    object), so the new token need not learn it (`caption_templates`). Learned from five blue squares on white
    without captions, the toy model's vector lay nearer the word "white" than "blue", and "a <x> on a black
    background" came out whitish.
    """
    if not template_file:
        has_caption = [caption_path(p).is_file() for p in image_paths]
        if not any(has_caption) or ignore_captions:
            return prompt_table(prompt_string, len(image_paths), learnable_property)
        captions = read_captions(image_paths)
        shared = len(set(captions)) == 1 and captions[0] != ""
        log.info(
            "using the captions beside %d of %d images (IMAGE%s) in %s ('a photo of a %s CAPTION'); "
            "--ignore_captions trains on the templates alone, as diffusers' script does",
            sum(has_caption), len(image_paths), CAPTION_SUFFIX,
            "every prompt: all images share it" if shared else "half the prompts", prompt_string,
        )  # fmt: skip
        templates = (shared_caption_templates if shared else caption_templates)(learnable_property)
        return prompt_table(prompt_string, len(image_paths), learnable_property, templates, captions)
    templates = load_template_file(template_file)
    captions = read_captions(image_paths)
    if any(FILEWORDS_TAG in t for t in templates) and not any(captions):
        log.warning(
            "--template_file uses %s but no image has a caption file (IMAGE%s beside it); [filewords] stays empty",
            FILEWORDS_TAG,
            CAPTION_SUFFIX,
        )
    elif any(captions) and not any(FILEWORDS_TAG in t for t in templates):
        log.warning("the images have captions but no template uses %s, so they are not used", FILEWORDS_TAG)
    return prompt_table(prompt_string, len(image_paths), learnable_property, templates, captions)


def tokenize_prompt_table(
    tokenize: Callable[[list[str]], tuple[torch.Tensor, ...]], table: list[list[str]]
) -> tuple[torch.Tensor, ...]:
    """Every training prompt tokenized once, per tokenizer (`tokenize` is a family's `tokenize`): [rows, templates, L].

    rows is 1 when every image has the same prompts (no captions: exactly the shared [1, templates, L] table
    of before), else one row per image, indexed by the draws' (image_idx, template_idx).
    """
    rows = table if any(row != table[0] for row in table) else table[:1]
    flat = [text for row in rows for text in row]
    return tuple(ids.view(len(rows), len(rows[0]), -1) for ids in tokenize(flat))
