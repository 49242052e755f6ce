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
from textinv.models import shareable_model_name

log = logging.getLogger(__name__)

FINAL_EMBEDDING = "learned_embeds.safetensors"
FINAL_EMBEDDING_BIN = "learned_embeds.bin"
TOKEN_FILE = "token_identifier.txt"
CONCEPT_TYPE_FILE = "type_of_concept.txt"


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


def step_embedding_path(output_dir: Path, step: int, safe: bool) -> Path:
    return Path(output_dir) / f"learned_embeds-steps-{step}.{'safetensors' if safe else 'bin'}"


def save_concept(
    output_dir: Path, token: str, rows: torch.Tensor, learnable_property: str, metadata: dict[str, str]
) -> Path:
    """The final files, in the concepts-library layout diffusers and its guide expect.

    `learned_embeds.safetensors` is written last: its presence marks the run as finished.
    """
    output_dir = Path(output_dir)
    if "textinv.base_model" in metadata:
        # The file is shared: a local model path would reveal the machine's layout (see shareable_model_name).
        metadata = {**metadata, "textinv.base_model": shareable_model_name(metadata["textinv.base_model"])}
    save_diffusers_embedding(output_dir / FINAL_EMBEDDING_BIN, token, rows)
    write_text_atomic(output_dir / TOKEN_FILE, token)
    write_text_atomic(output_dir / CONCEPT_TYPE_FILE, learnable_property)
    return save_diffusers_embedding(output_dir / FINAL_EMBEDDING, token, rows, metadata=metadata)
