"""What a training output folder holds: every file and folder name, spelled here only.

diffusers' scripts and the concepts library fix these names (`learned_embeds.safetensors`,
`token_identifier.txt`, `type_of_concept.txt`, `learned_embeds-steps-N.*`); SDXL adds `learned_embeds_2.*`
for its second text encoder. Readers (`embeddings.read_embedding_folder`) and writers (`outputs`, `train`)
both take them from here.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDING_STEM = "learned_embeds"
FINAL_EMBEDDING = f"{EMBEDDING_STEM}.safetensors"
FINAL_EMBEDDING_BIN = f"{EMBEDDING_STEM}.bin"
# A concept folder's embedding files, in order of preference when reading one.
FOLDER_EMBEDDING_NAMES = (FINAL_EMBEDDING, FINAL_EMBEDDING_BIN)
TOKEN_FILE = "token_identifier.txt"
CONCEPT_TYPE_FILE = "type_of_concept.txt"
MODEL_CARD = "README.md"
VALIDATION_DIR = "validation"


def embedding_stem(encoder_index: int) -> str:
    """`learned_embeds` for the first text encoder, `learned_embeds_2` for the second (diffusers' SDXL script)."""
    return EMBEDDING_STEM if encoder_index == 0 else f"{EMBEDDING_STEM}_{encoder_index + 1}"


def step_embedding_path(output_dir: Path, step: int, safe: bool, encoder_index: int = 0) -> Path:
    """`learned_embeds-steps-N.safetensors` (or `.bin`): the embedding as it was at step N."""
    return Path(output_dir) / f"{embedding_stem(encoder_index)}-steps-{step}.{'safetensors' if safe else 'bin'}"


def validation_dir(output_dir: Path, step: int) -> Path:
    """Where the validation images of step N go."""
    return Path(output_dir) / VALIDATION_DIR / f"step-{step}"
