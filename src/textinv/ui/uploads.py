"""Uploaded files → a run folder under the output root: readable images and their captions kept, the rest named.

A run lives in `<output root>/<token>/` (then `-2`, `-3`... so a new run never touches an old one) with the
images it learned from in `images/`, beside the outputs `textinv train` writes.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from textinv.data import CAPTION_SUFFIX
from textinv.errors import TextinvError

IMAGES_FOLDER = "images"
TEMPLATE_NAME = "templates.txt"


@dataclass
class Uploads:
    images: list[Path] = field(default_factory=list)
    captions: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.images)} image(s)"
        if self.captions:
            text += f", {len(self.captions)} caption file(s)"
        if self.unreadable:
            text += f"; skipped, not readable images: {', '.join(self.unreadable)}"
        return text


def sort_uploads(paths: list[str | Path] | None) -> Uploads:
    """Split uploaded files into readable images, IMAGE.txt captions, and the names of everything else."""
    found = Uploads()
    for path in map(Path, paths or []):
        if path.suffix.lower() == CAPTION_SUFFIX:
            found.captions.append(path)
            continue
        try:
            with Image.open(path) as image:
                image.load()
            found.images.append(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            found.unreadable.append(path.name)
    return found


def slug(token: str) -> str:
    """A folder name for a token: `<my-star>` → `my-star`."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", token).strip("-.")
    return name or "concept"


def unused_path(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`...: the first that does not exist, so nothing earlier is overwritten."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def new_run_dir(output_root: Path, token: str) -> Path:
    """A fresh folder for a run of `token` under `output_root`; existing runs are never reused."""
    return unused_path(Path(output_root) / slug(token))


def stage_run_inputs(
    uploads: Uploads, run_dir: Path, template_file: str | Path | None = None
) -> tuple[Path, Path | None]:
    """Copy the images (and their captions, and the template file) into the run folder; (images dir, template)."""
    if not uploads.images:
        detail = f" (skipped: {', '.join(uploads.unreadable)})" if uploads.unreadable else ""
        raise TextinvError(f"no readable image uploaded{detail}; drop 3-5 .png/.jpg images of the concept")
    images_dir = Path(run_dir) / IMAGES_FOLDER
    images_dir.mkdir(parents=True, exist_ok=True)
    names = set()
    for path in uploads.images + uploads.captions:
        if path.name in names:
            raise TextinvError(f"two uploaded files are named {path.name}; rename one")
        names.add(path.name)
        shutil.copyfile(path, images_dir / path.name)
    template = None
    if template_file:
        template = Path(run_dir) / TEMPLATE_NAME
        shutil.copyfile(template_file, template)
    return images_dir, template
