"""What a run leaves in `--output_dir`, and the guard that never lets a new run clobber an old one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from textinv.atomic import write_text_atomic
from textinv.checkpoint import list_checkpoints
from textinv.embeddings import save_diffusers_embedding
from textinv.errors import TextinvError
from textinv.layout import CONCEPT_TYPE_FILE, FINAL_EMBEDDING, TOKEN_FILE, embedding_stem, step_embedding_path
from textinv.models import shareable_model_name

log = logging.getLogger(__name__)


def prepare_output_dir(output_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over a finished or interrupted one unless told to.

    With `--overwrite_output_dir` the old run's checkpoints are removed, so that `latest` can never
    mix two runs; its other files are replaced as the new run writes them.
    """
    output_dir = Path(output_dir)
    finished = (output_dir / FINAL_EMBEDDING).is_file()
    checkpoints = list_checkpoints(output_dir)
    if resuming or not (finished or checkpoints):
        output_dir.mkdir(parents=True, exist_ok=True)
        return
    what = "a finished run" if finished else f"an interrupted run ({checkpoints[-1].name})"
    if not overwrite:
        raise TextinvError(
            f"--output_dir {output_dir} holds {what}; continue it with --resume_from_checkpoint latest, "
            "choose another --output_dir, or pass --overwrite_output_dir to replace it"
        )
    for ckpt in checkpoints:
        shutil.rmtree(ckpt)
    log.info("--overwrite_output_dir: replacing %s in %s", what, output_dir)


def save_concept(
    output_dir: Path, token: str, rows: list[torch.Tensor], learnable_property: str, metadata: dict[str, str]
) -> Path:
    """The final files, in the concepts-library layout diffusers and its guide expect: per text encoder
    `learned_embeds[_2].bin` and `.safetensors` (`layout.embedding_stem`), the token and concept-type files.

    `learned_embeds.safetensors` is written last: its presence marks the run as finished.
    """
    output_dir = Path(output_dir)
    if "textinv.base_model" in metadata:
        # The file is shared: a local model path would reveal the machine's layout (see shareable_model_name).
        metadata = {**metadata, "textinv.base_model": shareable_model_name(metadata["textinv.base_model"])}
    for index, encoder_rows in enumerate(rows):
        save_diffusers_embedding(output_dir / f"{embedding_stem(index)}.bin", token, encoder_rows)
    write_text_atomic(output_dir / TOKEN_FILE, token)
    write_text_atomic(output_dir / CONCEPT_TYPE_FILE, learnable_property)
    for index in range(len(rows) - 1, -1, -1):
        path = output_dir / f"{embedding_stem(index)}.safetensors"
        save_diffusers_embedding(path, token, rows[index], metadata=metadata)
    return path


def save_step_embeddings(output_dir: Path, step: int, token: str, rows: list[torch.Tensor], safe: bool) -> Path:
    """`learned_embeds[_2]-steps-N.*`: the embedding of each text encoder as it was at step N; the first's path."""
    paths = [step_embedding_path(output_dir, step, safe, index) for index in range(len(rows))]
    for path, encoder_rows in zip(paths, rows, strict=True):
        save_diffusers_embedding(path, token, encoder_rows)
    return paths[0]
