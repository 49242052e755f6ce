"""Loading a learned concept into any diffusers Stable Diffusion pipeline, from wherever it lives.

Sources: an embedding file (any format `textinv.embeddings` reads), a training output folder,
a concepts-library folder, or a hub repo id already in the local Hugging Face cache.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from textinv.embeddings import EMBEDDING_IMAGE_SUFFIXES, Embedding, read_embedding
from textinv.errors import TextinvError
from textinv.families import describe_family, pipeline_dims, text_encoder_pairs
from textinv.models import looks_like_hub_id


def resolve_concept(source: str | os.PathLike, token: str | None = None) -> Embedding:
    """Read a concept from a file, a folder or a cached hub repo id; `token` renames it."""
    emb = read_embedding(_local_concept_path(str(source)))
    return replace(emb, token=token) if token else emb


def _local_concept_path(source: str) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not looks_like_hub_id(source):
        raise TextinvError(f"concept {source!r} not found: no such file or folder")
    from huggingface_hub import snapshot_download

    try:
        # Offline on purpose: generation must not silently download; users fetch concepts explicitly.
        return Path(snapshot_download(source, local_files_only=True))
    except Exception as exc:
        raise TextinvError(
            f"concept {source!r} is neither a local path nor a hub repo in the local cache; "
            f"download it first (`hf download {source}`) or pass a file or folder"
        ) from exc


def token_for_prompts(emb: Embedding, prompts: Sequence[str]) -> str:
    """The word prompts use for `emb`: its token, or, as AUTOMATIC1111 does, its file's name.

    A1111 and ComfyUI name an embedding file's concept after the file (`my-star.pt` -> `my-star`), whatever
    token is stored inside; so when the prompts say the file's name and not the token, the file's name is
    the trigger word. (For an embedding image A1111 uses the name stored inside, which is `emb.token`.)
    """
    path = Path(emb.source)
    if emb.token in " ".join(prompts) or not path.is_file() or path.suffix.lower() in EMBEDDING_IMAGE_SUFFIXES:
        return emb.token
    return path.stem if path.stem in " ".join(prompts) else emb.token


def check_concept_fits(emb: Embedding, dims: tuple[int, ...], what: str = "the model") -> None:
    """Refuse a concept trained for another model family, naming both families."""
    if emb.dims != tuple(dims):
        raise TextinvError(
            f"concept {emb.token} is for {describe_family(emb.dims)} but {what} is "
            f"{describe_family(tuple(dims))}; use a concept trained for this model family"
        )


def load_concept(pipe: Any, source: str | os.PathLike | Embedding, token: str | None = None) -> str:
    """Add a learned concept to `pipe` so prompts can use it; returns the token to write in prompts.

    Works on any diffusers SD/SDXL pipeline (it goes through the pipeline's own
    `load_textual_inversion`, so multi-vector tokens expand the way diffusers expects).
    Refuses, with one line: a concept of another family, a token already in the vocabulary,
    and non-finite vectors.
    """
    emb = source if isinstance(source, Embedding) else resolve_concept(source, token)
    if token and emb.token != token:
        emb = replace(emb, token=token)
    pairs = text_encoder_pairs(pipe)
    check_concept_fits(emb, pipeline_dims(pipe))
    for vec in emb.vectors:
        if not torch.isfinite(vec).all():
            raise TextinvError(f"concept {emb.token} contains NaN or infinite values; retrain or re-export it")
    for tokenizer, _ in pairs:
        vocab = tokenizer.get_vocab()
        taken = [t for t in (emb.token, f"{emb.token}_1") if t in vocab]
        if taken:
            raise TextinvError(
                f"token {taken[0]!r} is already in the model's vocabulary (a concept loaded twice, or a real "
                "word); give it another name (--concept PATH=NEW_TOKEN, or token=... in Python)"
            )
    if not hasattr(pipe, "load_textual_inversion"):
        raise TextinvError(f"{type(pipe).__name__} cannot load textual-inversion concepts")
    for (tokenizer, encoder), vectors in zip(pairs, emb.vectors, strict=True):
        try:
            pipe.load_textual_inversion(
                {emb.token: vectors}, token=emb.token, tokenizer=tokenizer, text_encoder=encoder
            )
        except ValueError as exc:  # diffusers' own checks; keep the user's message to one line
            raise TextinvError(f"could not load concept {emb.token}: {str(exc).splitlines()[0]}") from exc
    return emb.token
