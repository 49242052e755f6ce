"""Model families (SD 1, SD 2, SDXL, ...): what tells them apart, and the adapter each one trains through.

Light on purpose (no torch import): embedding readers, `inspect` and the model loader ask these
questions without loading a model. The training adapters live in `families/sd.py` (one text encoder:
SD 1.x, SD 2.x) and beside it for the families with more encoders; `adapter_for(pipe)` picks one.
A new family (SD3: CLIP-L, CLIP-G and T5; FLUX: CLIP-L and T5) is a new module registered in `ADAPTERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Text-embedding widths of each text encoder → family. A concept file's widths name its family.
FAMILY_BY_DIMS: dict[tuple[int, ...], str] = {(768,): "sd1", (1024,): "sd2", (768, 1280): "sdxl"}
# What A1111, ComfyUI and kohya call the two encoders' vectors in one SDXL embedding file.
SDXL_ENCODER_KEYS = ("clip_l", "clip_g")


def family_of_dims(dims: tuple[int, ...]) -> str:
    """Model family a set of text-embedding widths belongs to: sd1, sd2, sdxl, else custom-<dims>."""
    return FAMILY_BY_DIMS.get(tuple(dims), "custom-" + "+".join(str(d) for d in dims))


def describe_family(dims: tuple[int, ...]) -> str:
    """`sd1 (768)`-style wording for error messages that name a family."""
    return f"{family_of_dims(dims)} ({'+'.join(str(d) for d in dims)})"


def encoder_keys(count: int) -> tuple[str, ...]:
    """Names of a concept's per-encoder vectors in reports: none needed for one encoder, clip_l/clip_g for two."""
    return SDXL_ENCODER_KEYS[:count] if count > 1 else ()


def single_file_is_sdxl(path: Path) -> bool:
    """Whether a single-file checkpoint holds SDXL (its second text encoder's keys), read from the header only."""
    if path.suffix.lower() != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return any(k.startswith("conditioner.embedders.1") for k in f.keys())


def text_encoder_pairs(pipe: Any) -> list[tuple[Any, Any]]:
    """(tokenizer, text_encoder) pairs of a pipeline, in the order concept files list their vectors."""
    from textinv.errors import TextinvError

    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None))]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((getattr(pipe, "tokenizer_2", None), pipe.text_encoder_2))
    if any(tok is None or enc is None for tok, enc in pairs):
        raise TextinvError("this pipeline has no tokenizer/text encoder; use a Stable Diffusion pipeline")
    return pairs


def pipeline_dims(pipe: Any) -> tuple[int, ...]:
    """Text-embedding width of each text encoder of `pipe` (768 for SD1, (768, 1280) for SDXL...)."""
    return tuple(int(enc.get_input_embeddings().weight.shape[1]) for _, enc in text_encoder_pairs(pipe))


def adapter_for(pipe: Any):
    """The training adapter (`families.base.FamilyAdapter`) for a loaded pipeline."""
    from textinv.errors import TextinvError
    from textinv.families.registry import ADAPTERS

    for adapter in ADAPTERS:
        if adapter.matches(pipe):
            return adapter(pipe)
    raise TextinvError(
        f"textinv cannot train embeddings for {describe_family(pipeline_dims(pipe))} models yet "
        f"({type(pipe).__name__}); use an SD 1.x/2.x model"
    )
