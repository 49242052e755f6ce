"""The judge: a small CNN that names the shape, colour and background of a shapes-world image.

Why: "did textual inversion learn the concept?" must be a number, not a glance; the judge turns a
folder of generated images into match rates (`textinv toy score`). It is trained on the world
itself, with blur, noise and colour-shift augmentation so that it also reads slightly blurry
diffusion samples, and on images that show no clear concept (toy/unclear.py: distorted, heavily
blurred, merged and partial shapes, colours between two named ones), which it must call "unclear":
an unclear shape or colour never counts as a match, so a failed sample cannot flatter the score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from textinv.data import IMAGE_SUFFIXES
from textinv.errors import TextinvError
from textinv.toy import unclear, world

JUDGE_FILE = Path(__file__).resolve().parent / "judge" / "judge.safetensors"
ATTRIBUTES = ("shape", "colour", "background")
GRID_PREFIX = "grid"


class Judge(nn.Module):
    """Conv net with one head per attribute; input (N, 3, 32, 32) in [-1, 1]."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

        w = width
        self.features = nn.Sequential(
            block(3, w, 1), block(w, w, 2), block(w, 2 * w, 1), block(2 * w, 2 * w, 2),
            block(2 * w, 4 * w, 2),
        )  # fmt: skip
        self.heads = nn.ModuleDict({name: nn.Linear(4 * w, len(labels)) for name, labels in _labels().items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x).mean(dim=(2, 3))
        return {name: head(h) for name, head in self.heads.items()}


def _labels() -> dict[str, tuple[str, ...]]:
    """Each head's classes; shape and colour end with "unclear" (the background is always readable)."""
    return {
        "shape": (*world.SHAPES, unclear.UNCLEAR),
        "colour": (*world.COLOURS, unclear.UNCLEAR),
        "background": tuple(world.BACKGROUNDS),
    }


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB images of any size -> (N, 3, 32, 32) in [-1, 1] (larger images are box-downsampled)."""
    size = (world.IMAGE_SIZE, world.IMAGE_SIZE)
    arr = np.stack([np.asarray(im.convert("RGB").resize(size, Image.Resampling.BOX)) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur, noise and a colour shift, each of random strength: what diffusion samples look like."""
    n = x.shape[0]
    sigma = torch.rand(n, generator=g) * 1.2
    k = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (n, 5)
    x = x.reshape(1, n * 3, *x.shape[2:])
    kh = kernel.repeat_interleave(3, 0)[:, None, None, :]
    kv = kernel.repeat_interleave(3, 0)[:, None, :, None]
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kh, groups=n * 3)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kv, groups=n * 3)
    x = x.reshape(n, 3, *x.shape[2:])
    x = x * (1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5))
    x = x + 0.12 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    x = x + torch.randn(x.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 0.08
    return x.clamp(-1, 1)


def _dataset(n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    scenes = list(world.scenes(n, seed))
    x = to_tensor([world.render(s) for s in scenes])
    names = _labels()
    y = {a: torch.tensor([names[a].index(getattr(s, a)) for s in scenes]) for a in ATTRIBUTES}
    return x, y


def _unclear_dataset(kind: str, n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], list]:
    """`n` unclear images of `kind`, their labels, and the (colour, shape) pairs each was drawn from."""
    items = list(unclear.images(kind, n, seed))
    x = to_tensor([item.image for item in items])
    names = _labels()
    y = {a: torch.tensor([names[a].index(getattr(item, a)) for item in items]) for a in ATTRIBUTES}
    return x, y, [item.sources for item in items]


def _training_set(n_images: int, n_unclear: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clean world images and `n_unclear` of each unclear kind, from seeds no evaluation uses."""
    parts = [_dataset(n_images, seed + 1000)]
    parts += [_unclear_dataset(kind, n_unclear, seed + 2000 + i)[:2] for i, kind in enumerate(unclear.KINDS)]
    x = torch.cat([part[0] for part in parts])
    return x, {a: torch.cat([part[1][a] for part in parts]) for a in ATTRIBUTES}


@torch.no_grad()
def _predict(judge: Judge, x: torch.Tensor) -> dict[str, torch.Tensor]:
    judge.eval()
    outs = [judge(x[i : i + 500]) for i in range(0, len(x), 500)]
    return {a: torch.cat([o[a].argmax(1) for o in outs]) for a in ATTRIBUTES}


@torch.no_grad()
def evaluate(judge: Judge, n: int = 2000, seed: int = 12345, augment: bool = False) -> dict[str, float]:
    """Accuracy per attribute and for all three at once on `n` fresh clean images, and how many read unclear."""
    x, y = _dataset(n, seed)
    if augment:
        x = _augment(x, torch.Generator().manual_seed(seed))
    pred = _predict(judge, x)
    correct = {a: pred[a] == y[a] for a in ATTRIBUTES}
    acc = {a: correct[a].float().mean().item() for a in ATTRIBUTES}
    acc["all"] = (correct["shape"] & correct["colour"] & correct["background"]).float().mean().item()
    acc["unclear"] = (
        ((pred["shape"] == len(world.SHAPES)) | (pred["colour"] == len(world.COLOURS))).float().mean().item()
    )
    return acc


@torch.no_grad()
def evaluate_unclear(judge: Judge, kind: str, n: int = 500, seed: int = 12345) -> dict[str, float]:
    """On `n` fresh unclear images of `kind`: how often the judge reads them right and how often they flatter.

    "correct": shape and colour read as labelled (a spoiled attribute as "unclear"); "flagged": shape or
    colour read "unclear", so the image can never count as a match; "counted": read as one of the
    concepts it was drawn from, i.e. a match that flatters; "background": background read right.
    """
    x, y, sources = _unclear_dataset(kind, n, seed)
    pred = _predict(judge, x)
    shapes, colours = _labels()["shape"], _labels()["colour"]
    correct = (pred["shape"] == y["shape"]) & (pred["colour"] == y["colour"])
    flagged = (pred["shape"] == len(world.SHAPES)) | (pred["colour"] == len(world.COLOURS))
    read = zip(pred["colour"].tolist(), pred["shape"].tolist(), strict=True)
    counted = [(colours[c], shapes[s]) in src for (c, s), src in zip(read, sources, strict=True)]
    return {
        "correct": correct.float().mean().item(),
        "flagged": flagged.float().mean().item(),
        "counted": sum(counted) / n,
        "background": (pred["background"] == y["background"]).float().mean().item(),
    }


def measure(judge: Judge, n: int = 2000, n_unclear: int = 500, seed: int = 12345) -> dict[str, dict[str, float]]:
    """Every accuracy the judge ships with: clean images (plain and augmented) and each unclear kind."""
    result = {"clean": evaluate(judge, n, seed), "clean_augmented": evaluate(judge, n, seed + 1, augment=True)}
    for i, kind in enumerate(unclear.KINDS):
        result[kind] = evaluate_unclear(judge, kind, n_unclear, seed + 2 + i)
    return result


def train_judge(
    n_images: int = 12000,
    epochs: int = 12,
    seed: int = 0,
    report: Callable[[str], None] = lambda _msg: None,
    n_unclear: int = 1200,
) -> Judge:
    """Train a judge from scratch on `n_images` rendered images and `n_unclear` of each unclear kind."""
    torch.manual_seed(seed)
    judge = Judge()
    x, y = _training_set(n_images, n_unclear, seed)
    total = len(x)
    g = torch.Generator().manual_seed(seed)
    batch = 128
    steps = epochs * math.ceil(total / batch)
    opt = torch.optim.AdamW(judge.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for epoch in range(epochs):
        judge.train()
        perm = torch.randperm(total, generator=g)
        for i in range(0, total, batch):
            idx = perm[i : i + batch]
            out = judge(_augment(x[idx], g))
            loss = sum(F.cross_entropy(out[a], y[a][idx]) for a in ATTRIBUTES)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        report(f"judge epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
    return judge.eval()


def save_judge(judge: Judge, path: Path = JUDGE_FILE, accuracy: dict | None = None) -> Path:
    """Save fp16 weights with the labels and `accuracy` (see `measure`) in the safetensors metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to(torch.float16).contiguous() for k, v in judge.state_dict().items() if v.is_floating_point()
    }
    meta = {"labels": json.dumps(_labels()), "accuracy": json.dumps(accuracy or {})}
    save_file(tensors, str(path), metadata=meta)
    return path


def load_judge(path: str | Path = JUDGE_FILE) -> Judge:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TextinvError(f"judge weights {path} are missing; rebuild them with `textinv toy build --judge-only`")
    with safe_open(str(path), framework="pt") as f:
        labels = json.loads(f.metadata()["labels"])
    if labels != {k: list(v) for k, v in _labels().items()}:
        raise TextinvError(f"judge {path} was trained on a different shapes world; rebuild it")
    judge = Judge()
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    judge.load_state_dict(state, strict=False)  # integer BatchNorm counters are not stored
    return judge.eval()


@torch.no_grad()
def classify(images: Sequence[Image.Image], judge: Judge | None = None) -> list[dict[str, str]]:
    """The judge's reading of each image: {"shape": ..., "colour": ..., "background": ...}."""
    judge = judge or load_judge()
    if not images:
        return []
    out = judge(to_tensor(images))
    names = _labels()
    picks = {a: out[a].argmax(1).tolist() for a in ATTRIBUTES}
    return [{a: names[a][picks[a][i]] for a in ATTRIBUTES} for i in range(len(images))]


def image_files(folder: str | Path, numbers: tuple[int, int] | None = None) -> list[Path]:
    """The sample images in `folder`: grids skipped; with `numbers` (first, last), only `textinv generate`'s
    images numbered in that range (one call's images, which it reports)."""
    from textinv.generation import image_number

    folder = Path(folder)
    if not folder.is_dir():
        raise TextinvError(f"{folder} is not a folder; pass a folder of generated images")
    # `textinv generate` writes grid-NNNN.png (the demo grid.png) of all images beside them; a grid is not a sample.
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(GRID_PREFIX)
    )
    if numbers is not None:
        first, last = numbers
        files = [p for p in files if (n := image_number(p)) is not None and first <= n <= last]
        if not files:
            raise TextinvError(f"no images numbered {first}-{last} in {folder}; check the numbers generate printed")
    if not files:
        raise TextinvError(f"no images (.png/.jpg/.webp) in {folder}; generate some first")
    return files


def score(
    images: Sequence[Image.Image],
    expect: str,
    background: str | None = None,
    judge: Judge | None = None,
) -> dict[str, float | int]:
    """Fractions of images showing the expected shape, colour (if named), background (if given), and both.

    "match" is shape and colour together (shape alone when `expect` names no colour); an image whose
    shape or colour reads "unclear" never matches, even when `expect` names no colour. "unclear" is
    the fraction of such images.
    """
    colour, shape = world.parse_concept(expect)
    world.check_background(background)
    readings = classify(images, judge)
    n = len(readings)
    if n == 0:
        raise TextinvError("no images to score")
    shape_ok = [r["shape"] == shape for r in readings]
    colour_ok = [r["colour"] != unclear.UNCLEAR if colour is None else r["colour"] == colour for r in readings]
    result: dict[str, float | int] = {
        "match": sum(s and c for s, c in zip(shape_ok, colour_ok, strict=True)) / n,
        "shape": sum(shape_ok) / n,
    }
    if colour is not None:
        result["colour"] = sum(colour_ok) / n
    if background is not None:
        result["background"] = sum(r["background"] == background for r in readings) / n
    result["unclear"] = sum(unclear.UNCLEAR in (r["shape"], r["colour"]) for r in readings) / n
    result["n"] = n
    return result


def score_folder(
    folder: str | Path, expect: str, background: str | None = None, numbers: tuple[int, int] | None = None
) -> dict[str, float | int]:
    """`score` over the image files in `folder` (see `image_files`)."""
    images = []
    for path in image_files(folder, numbers):
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    return score(images, expect, background)


def shipped_accuracy(path: str | Path = JUDGE_FILE) -> dict:
    """The accuracy stored with a judge's weights (what `textinv toy build --judge-only` measured)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["accuracy"])


def sample_accuracy_report(acc: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2%}" for k, v in acc.items())


def accuracy_report(measured: dict[str, dict[str, float]]) -> str:
    """One line per part of `measure`'s result."""
    return "\n".join(f"{part}: {sample_accuracy_report(acc)}" for part, acc in measured.items())
