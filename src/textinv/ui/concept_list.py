"""The concepts under the output root: what they are, their validation images, export and delete."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from textinv.embeddings import read_embedding_folder, write_embedding
from textinv.errors import TextinvError
from textinv.layout import FINAL_EMBEDDING

# Download formats: label → (format for write_embedding, file suffix).
EXPORTS = {
    "diffusers (.safetensors)": ("diffusers", ".safetensors"),
    "A1111 (.pt)": ("a1111", ".pt"),
    "A1111 (.safetensors)": ("a1111", ".safetensors"),
}


@dataclass(frozen=True)
class ConceptInfo:
    folder: Path
    token: str
    family: str
    num_vectors: int
    base_model: str
    learnable_property: str
    step: str
    validation: tuple[Path, ...]

    def row(self) -> list[str]:
        return [self.folder.name, self.token, self.family, str(self.num_vectors), self.base_model, self.step]


def latest_validation(folder: Path) -> tuple[Path, ...]:
    """The PNGs of the last validation (`validation/step-N/`, highest N)."""
    steps = [p for p in (folder / "validation").glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    if not steps:
        return ()
    return tuple(sorted(max(steps, key=lambda p: int(p.name[5:])).glob("*.png")))


def _model_name(base_model: str) -> str:
    """The embedded toy model is recorded by its install path; the list says what it is."""
    from textinv.models import resolve_model_source, toy_model_available

    if base_model and toy_model_available() and base_model == resolve_model_source(None).path_or_id:
        return "textinv-toy"
    return base_model


def list_concepts(output_root: Path) -> list[ConceptInfo]:
    """Every finished training under `output_root` (a folder with learned_embeds.safetensors), by name."""
    root = Path(output_root)
    found = []
    for folder in sorted(p for p in root.iterdir() if (p / FINAL_EMBEDDING).is_file()) if root.is_dir() else []:
        try:
            emb = read_embedding_folder(folder)
        except TextinvError:
            continue  # a broken folder must not hide the others; `textinv inspect` explains it
        meta = emb.metadata
        found.append(
            ConceptInfo(
                folder=folder,
                token=emb.token,
                family=emb.family,
                num_vectors=emb.num_vectors,
                base_model=_model_name(meta.get("textinv.base_model", "")),
                learnable_property=meta.get("textinv.learnable_property", meta.get("type_of_concept", "")),
                step=meta.get("textinv.step", ""),
                validation=latest_validation(folder),
            )
        )
    return found


def concept_folder(output_root: Path, name: str) -> Path:
    """The concept folder `name` directly under the root; anything else (`..`, paths) is refused."""
    root = Path(output_root).resolve()
    folder = (root / name).resolve()
    if not name or folder.parent != root or not (folder / FINAL_EMBEDDING).is_file():
        raise TextinvError(f"no concept named {name!r} under {root}; pick one from the list")
    return folder


def export_concept(output_root: Path, name: str, label: str, dest_dir: Path) -> Path:
    """Write concept `name` in the download format `label` into `dest_dir`; the file is named after the token."""
    if label not in EXPORTS:
        raise TextinvError(f"unknown format {label!r}; use one of {', '.join(EXPORTS)}")
    fmt, suffix = EXPORTS[label]
    emb = read_embedding_folder(concept_folder(output_root, name))
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in emb.token).strip("-.") or "concept"
    dest_dir.mkdir(parents=True, exist_ok=True)
    # A1111 and ComfyUI call a concept by its file name, so the file is named after the token.
    return write_embedding(dest_dir / f"{stem}{suffix}", emb, fmt)


def delete_concept(output_root: Path, name: str, confirmation: str) -> None:
    """Delete a concept folder, only when `confirmation` repeats its name (nothing a user made goes by accident)."""
    folder = concept_folder(output_root, name)
    if confirmation.strip() != folder.name:
        raise TextinvError(f"to delete {folder.name}, type its name ({folder.name}) in the confirmation box")
    shutil.rmtree(folder)
