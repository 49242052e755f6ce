"""Embedding files: every format we read and write (diffusers, concepts library, A1111/ComfyUI, SDXL pairs).

Formats (the `format` field of `Embedding`):

- ``diffusers``: ``{token: tensor[n, dim]}`` in .safetensors or a weights-only .bin/.pt
  (diffusers' trainer and the sd-concepts-library write it; older files hold a 1-D ``[dim]``).
- ``a1111``: AUTOMATIC1111's ``.pt`` (``string_to_param: {'*': tensor}`` plus ``name``, ``step``,
  ``sd_checkpoint``…) and its ``.safetensors`` (one tensor, ``emb_params``). ComfyUI reads both.
- ``sdxl``: ``clip_l [n, 768]`` + ``clip_g [n, 1280]`` in one file (A1111, ComfyUI, diffusers docs).
- ``a1111-image``: an A1111 embedding hidden in a PNG/WebP, as a base64 JSON text chunk
  (``sd-ti-embedding``) or in the low bits of the pixels beside the picture.

Untrusted files are read with safetensors or `torch.load(weights_only=True)` only: a pickle that
needs any other global is refused, never executed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import re
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from textinv.atomic import write_atomic
from textinv.errors import TextinvError
from textinv.families import SDXL_ENCODER_KEYS, family_of_dims
from textinv.layout import CONCEPT_TYPE_FILE, FOLDER_EMBEDDING_NAMES, TOKEN_FILE, embedding_stem
from textinv.safetensors_file import save_tensors

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt")
# Images that can carry an A1111 embedding (a text chunk, or the pixels' low bits).
EMBEDDING_IMAGE_SUFFIXES = (".png", ".webp")
READABLE_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES, *EMBEDDING_IMAGE_SUFFIXES)
WRITE_FORMATS = ("diffusers", "a1111")


A1111_SAFETENSORS_KEY = "emb_params"
# A1111 writes this constant (CLIP's id of "*") in every .pt; readers ignore it, but keep the layout.
A1111_STAR_TOKEN_ID = 265
IMAGE_TEXT_CHUNK = "sd-ti-embedding"

# Members a torch zip archive may hold for AUTOMATIC1111's safe-unpickle gate (modules/safe.py):
# `<dir>/data.pkl`, `<dir>/version`, `<dir>/data/<n>`. torch >= 2.1 adds byteorder,
# .format_version, .storage_alignment and .data/serialization_id, which older gates reject.
_A1111_ALLOWED_MEMBER = re.compile(r"^[^/]+/(data\.pkl|version|data/\d+)$")
# torch.load(mmap=True) (diffusers uses it) wants each tensor's bytes aligned like torch.save does.
_STORAGE_ALIGNMENT = 64


@dataclass(frozen=True)
class Embedding:
    """A learned concept as read from (or about to be written to) any embedding file.

    `vectors` holds one tensor [num_vectors, dim] per text encoder: one for SD1/SD2,
    (clip_l, clip_g) for SDXL. `token` is what the prompt uses to refer to it.
    """

    token: str
    vectors: tuple[torch.Tensor, ...]
    format: str
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def num_vectors(self) -> int:
        return int(self.vectors[0].shape[0])

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(int(v.shape[-1]) for v in self.vectors)

    @property
    def dim(self) -> int | list[int]:
        """The width: an int for one text encoder, a list for SDXL pairs (as `inspect --json` shows)."""
        return self.dims[0] if len(self.dims) == 1 else list(self.dims)

    @property
    def dtype(self) -> str:
        return str(self.vectors[0].dtype).removeprefix("torch.")

    @property
    def family(self) -> str:
        """The family the widths name; for widths no released model has (random test models), the family its
        trainer recorded (`textinv.family`), else `custom-<dims>`."""
        family = family_of_dims(self.dims)
        recorded = self.metadata.get("textinv.family", "")
        if family.startswith("custom-") and recorded and not recorded.startswith("custom-"):
            return recorded
        return family

    @property
    def is_sdxl(self) -> bool:
        return len(self.vectors) == 2


# ----------------------------------------------------------------------------------------------
# Reading


def read_embedding(path: str | os.PathLike) -> Embedding:
    """Read an embedding file or folder in any supported format (detected from the content)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return read_embedding_folder(path)
    if not path.exists():
        raise TextinvError(f"embedding file {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise TextinvError(f"embedding file {path} is empty (0 bytes); re-download or re-export it")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return _from_tensors(path, _load_safetensors(path), container="safetensors")
    if suffix in PICKLE_SUFFIXES:
        return _from_pickled(path, load_weights_only(path))
    if suffix in EMBEDDING_IMAGE_SUFFIXES:
        return read_image_embedding(path)
    raise TextinvError(
        f"{path.name}: unknown embedding file type {path.suffix!r}; "
        f"expected one of {', '.join(READABLE_SUFFIXES)} or a folder"
    )


def read_embedding_folder(folder: Path) -> Embedding:
    """A training output or concepts-library folder: learned_embeds.* (+ token_identifier.txt).

    An SDXL run's folder also holds learned_embeds_2.* (diffusers' SDXL script: one file per text encoder);
    the two are one concept, read as a clip_l + clip_g pair.
    """
    file = find_embedding_file(folder)
    emb = _with_other_encoders(folder, file, read_embedding(file))
    token_file = folder / TOKEN_FILE
    if token_file.is_file():
        # The token the concept's author told users to type wins over the key inside the file.
        token = token_file.read_text(encoding="utf-8").strip()
        if token:
            emb = replace(emb, token=token)
    type_file = folder / CONCEPT_TYPE_FILE
    if type_file.is_file():
        emb = replace(emb, metadata={**emb.metadata, "type_of_concept": type_file.read_text(encoding="utf-8").strip()})
    return replace(emb, source=str(folder))


def _with_other_encoders(folder: Path, file: Path, emb: Embedding) -> Embedding:
    """`emb` (the first text encoder's rows) joined by learned_embeds_2.* (and so on) beside it, if any."""
    if file.name not in FOLDER_EMBEDDING_NAMES or len(emb.vectors) != 1:
        return emb
    vectors = list(emb.vectors)
    while (companion := folder / f"{embedding_stem(len(vectors))}{file.suffix}").is_file():
        other = read_embedding(companion)
        if len(other.vectors) != 1 or other.num_vectors != emb.num_vectors:
            raise TextinvError(
                f"{companion} does not match {file.name} ({other.num_vectors} vs {emb.num_vectors} vectors); "
                "both must come from the same training run"
            )
        vectors.append(other.vectors[0])
    if len(vectors) == 1:
        return emb
    fmt = "sdxl" if len(vectors) == len(SDXL_ENCODER_KEYS) else emb.format
    return _make(file, emb.token, tuple(vectors), fmt, emb.metadata)


def find_embedding_file(folder: Path) -> Path:
    """The embedding file inside a concept folder, or a one-line error saying what was there."""
    for name in FOLDER_EMBEDDING_NAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
    )
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates[:5])
        raise TextinvError(f"{folder} holds several embedding files ({names}); pass one of them instead")
    raise TextinvError(
        f"no embedding in {folder} (expected {' or '.join(FOLDER_EMBEDDING_NAMES)}); "
        "pass a training output folder, a concepts-library folder or an embedding file"
    )


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise TextinvError(
            f"{path.name} is not a readable .safetensors file ({_first_line(exc)}); "
            "it may be truncated or corrupt, re-download or re-export it"
        ) from exc
    return tensors, metadata


def load_weights_only(path: Path) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only, never arbitrary code."""
    try:
        # ParameterDict: A1111 files saved by torch 1.11/1.12 wrap string_to_param in one (A1111's own
        # allowlist has it too); rebuilding it only sets attributes, it runs nothing from the file.
        with warnings.catch_warnings(), torch.serialization.safe_globals([torch.nn.ParameterDict]):
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing; the error says it
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickling_detail(exc)
        raise TextinvError(
            f"refusing to load {path.name}: it needs more than tensors ({detail}) and unpickling it could "
            "run code; use a .safetensors copy of this embedding instead"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError... for damaged files
        raise TextinvError(
            f"{path.name} is not a readable PyTorch file ({type(exc).__name__}: {_first_line(exc)}); "
            "it may be truncated or corrupt, re-download or re-export it"
        ) from exc


def _unpickling_detail(exc: Exception) -> str:
    text = str(exc)
    found = re.search(r"Unsupported (global|operand)[^.\n]*", text)
    return found.group(0).strip() if found else _first_line(exc)


def _from_pickled(path: Path, data: Any) -> Embedding:
    if isinstance(data, torch.Tensor):
        # A bare tensor carries no token name; the file name stands in (as diffusers asks for one).
        return _make(path, path.stem, (data,), "diffusers", {})
    if not isinstance(data, Mapping):
        raise TextinvError(
            f"{path.name} holds a {type(data).__name__}, not an embedding; "
            "expected {token: tensor} or an AUTOMATIC1111 embedding"
        )
    if "string_to_param" in data:
        return _from_a1111_dict(path, data)
    return _from_tensors(path, (dict(data), {}), container="pickle")


def _from_a1111_dict(path: Path, data: Mapping[str, Any], fmt: str = "a1111") -> Embedding:
    params = data["string_to_param"]
    if isinstance(params, torch.nn.ParameterDict):
        params = dict(params.items())
    if not isinstance(params, Mapping) or len(params) != 1:
        count = len(params) if isinstance(params, Mapping) else 0
        raise TextinvError(f"{path.name}: string_to_param holds {count} entries, an embedding holds exactly one")
    tensor = next(iter(params.values()))
    name = data.get("name")
    token = name if isinstance(name, str) and name else path.stem
    metadata = {
        key: str(data[key]) for key in ("step", "sd_checkpoint", "sd_checkpoint_name") if data.get(key) is not None
    }
    extra = data.get("textinv_metadata")
    if isinstance(extra, Mapping):
        metadata.update({str(k): str(v) for k, v in extra.items()})
    return _make(path, token, (tensor,), fmt, metadata)


def _from_tensors(path: Path, loaded: tuple[dict[str, Any], dict[str, str]], *, container: str) -> Embedding:
    tensors, metadata = loaded
    if not tensors:
        raise TextinvError(f"{path.name} holds no tensors; it is not an embedding")
    if all(key in tensors for key in SDXL_ENCODER_KEYS):
        token = metadata.get("token") or path.stem
        return _make(path, token, tuple(tensors[k] for k in SDXL_ENCODER_KEYS), "sdxl", metadata)
    if len(tensors) != 1:
        names = ", ".join(list(tensors)[:5])
        raise TextinvError(
            f"{path.name} holds {len(tensors)} entries ({names}); an embedding file holds one token "
            "(or an SDXL clip_l + clip_g pair)"
        )
    key, tensor = next(iter(tensors.items()))
    if key == A1111_SAFETENSORS_KEY:
        # A1111 names a .safetensors embedding after its file; we also keep the token in metadata.
        return _make(path, metadata.get("token") or path.stem, (tensor,), "a1111", metadata)
    return _make(path, key, (tensor,), "diffusers", metadata)


def _make(path: Path, token: str, vectors: tuple[Any, ...], fmt: str, metadata: dict[str, str]) -> Embedding:
    checked = []
    for v in vectors:
        if not isinstance(v, torch.Tensor):
            raise TextinvError(f"{path.name}: expected a tensor for the embedding, found {type(v).__name__}")
        if v.ndim == 1:
            v = v.unsqueeze(0)
        if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
            raise TextinvError(f"{path.name}: embedding has shape {list(v.shape)}, expected [num_vectors, dim]")
        if not v.is_floating_point():
            raise TextinvError(f"{path.name}: embedding has dtype {v.dtype}, expected floating point")
        checked.append(v.detach().to("cpu"))
    if len(checked) == 2 and checked[0].shape[0] != checked[1].shape[0]:
        raise TextinvError(
            f"{path.name}: clip_l has {checked[0].shape[0]} vectors but clip_g has {checked[1].shape[0]}; "
            "the pair must match"
        )
    return Embedding(token=token, vectors=tuple(checked), format=fmt, metadata=metadata, source=str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------------------------
# Embeddings hidden in images (AUTOMATIC1111's "save images with embedding in PNG chunks")


def read_image_embedding(path: Path) -> Embedding:
    """Read an A1111 embedding from an image: the text chunk first, then the pixel-encoded copy."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            text = dict(getattr(image, "text", {}) or {})
            data = None
            if IMAGE_TEXT_CHUNK in text:
                data = _decode_json_embedding(base64.b64decode(text[IMAGE_TEXT_CHUNK]))
            else:
                data = _extract_pixel_embedding(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise TextinvError(f"{path.name} is not a readable image ({_first_line(exc)})") from exc
    except (ValueError, zlib.error, TypeError) as exc:
        raise TextinvError(f"{path.name}: the embedding inside the image is damaged ({_first_line(exc)})") from exc
    if not isinstance(data, Mapping) or "string_to_param" not in data:
        raise TextinvError(
            f"no embedding in image {path.name}; only images saved by AUTOMATIC1111 with an embedding inside work"
        )
    return _from_a1111_dict(path, data, fmt="a1111-image")


def _decode_json_embedding(raw: bytes) -> Any:
    """A1111 stores tensors in JSON as {"TORCHTENSOR": nested lists}; rebuild them as tensors."""

    def to_tensor(obj: dict[str, Any]) -> Any:
        if "TORCHTENSOR" in obj:
            t = torch.tensor(obj["TORCHTENSOR"], dtype=torch.float64)
            # The JSON came from float32 vectors; go back to float32 when no value changes.
            as32 = t.to(torch.float32)
            return as32 if torch.equal(as32.to(torch.float64), t) else t
        return obj

    return json.loads(raw.decode("utf-8"), object_hook=to_tensor)


def _extract_pixel_embedding(image) -> Any:
    """Decode A1111's pixel copy: two noise-like blocks (low and high nibbles) either side of the picture."""
    import numpy as np

    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    lit = (rgb > 0).all(axis=2)
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    nibbles = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] & 0x0F
    black = np.flatnonzero(nibbles.sum(axis=(0, 2)) == 0)
    if black.size < 2:
        return None
    low = _unmask(nibbles[:, : black.min()])
    high = _unmask(nibbles[:, black.max() + 1 :])
    if low.shape != high.shape:
        return None
    packed = ((high << 4) | low).astype(np.uint8).tobytes()
    return _decode_json_embedding(zlib.decompressobj().decompress(packed))


def _unmask(block):
    """Undo A1111's XOR with a fixed LCG stream (seed 0, values mod 255, low nibble only)."""
    import numpy as np

    stream = np.empty(block.size, dtype=np.uint8)
    state = 0
    for i in range(block.size):
        state = (1664525 * state + 1013904223) % 2**32
        stream[i] = state % 255
    return block.astype(np.uint8) ^ (stream.reshape(block.shape) & 0x0F)


# ----------------------------------------------------------------------------------------------
# Writing


def save_diffusers_embedding(
    path: str | os.PathLike, token: str, vectors: torch.Tensor, metadata: dict[str, str] | None = None
) -> Path:
    """Write `{token: tensor[num_vectors, dim]}` (diffusers' layout) as .safetensors or weights-only .bin.

    The container follows the suffix; the write is atomic. A .bin/.pt also passes A1111's
    safe-unpickle gate, so the same file works in AUTOMATIC1111's embeddings folder.
    """
    path = Path(path)
    tensor = vectors.detach().to("cpu").contiguous()
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if path.suffix == ".safetensors":
        return save_tensors({token: tensor}, path, metadata)
    return write_atomic(path, lambda p: p.write_bytes(torch_zip_bytes({token: tensor})))


def save_a1111_embedding(
    path: str | os.PathLike,
    token: str,
    vectors: torch.Tensor,
    *,
    step: int | None = None,
    sd_checkpoint: str | None = None,
    sd_checkpoint_name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write AUTOMATIC1111's layout: .pt with string_to_param, or .safetensors with emb_params.

    A1111 names the concept after the file (``<stem>`` in the prompt); diffusers reads ``name``.
    """
    path = Path(path)
    tensor = vectors.detach().to("cpu").contiguous()
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    extra = dict(metadata or {})
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        header = {**extra, "token": token}
        if step is not None:
            header["step"] = str(step)
        return save_tensors({A1111_SAFETENSORS_KEY: tensor}, path, header)
    data: dict[str, Any] = {
        "string_to_token": {"*": A1111_STAR_TOKEN_ID},
        "string_to_param": {"*": tensor},
        "name": token,
        "step": step,
        "sd_checkpoint": sd_checkpoint,
        "sd_checkpoint_name": sd_checkpoint_name,
    }
    extra = {k: v for k, v in extra.items() if k not in ("step", "sd_checkpoint", "sd_checkpoint_name")}
    if extra:
        # Plain str->str dict: no extra pickle globals, so A1111's gate and weights_only still accept it.
        data["textinv_metadata"] = extra
    return write_atomic(path, lambda p: p.write_bytes(torch_zip_bytes(data)))


def write_embedding(path: str | os.PathLike, emb: Embedding, to: str) -> Path:
    """Write `emb` in format `to` ("diffusers" | "a1111"); the container follows the suffix of `path`.

    A .png with `to="a1111"` is an AUTOMATIC1111 embedding image (`save_a1111_image`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if to not in WRITE_FORMATS:
        raise TextinvError(f"unknown format {to!r}; use one of {', '.join(WRITE_FORMATS)}")
    a1111_image = suffix == ".png" and to == "a1111"
    if "textinv.base_model" in emb.metadata:
        from textinv.models import shareable_model_name

        # Files written before textinv stored names may hold a local path; a converted copy is shared.
        emb = replace(
            emb,
            metadata={**emb.metadata, "textinv.base_model": shareable_model_name(emb.metadata["textinv.base_model"])},
        )
    if suffix not in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES) and not a1111_image:
        raise TextinvError(
            f"cannot write {path.name}: the output must end in .safetensors, .bin or .pt (it picks the container), "
            "or .png with --to a1111 (an AUTOMATIC1111 embedding image)"
        )
    if emb.is_sdxl:
        if to != "a1111" or a1111_image:
            raise TextinvError(
                f"{emb.token} is an SDXL clip_l + clip_g pair; write it with --to a1111 to a .safetensors or .pt "
                "file (the one-file layout AUTOMATIC1111, ComfyUI, kohya and diffusers' SDXL loading use)"
            )
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in zip(SDXL_ENCODER_KEYS, emb.vectors, strict=True)}
        if suffix != SAFETENSORS_SUFFIX:
            # A1111 reads a pickled SDXL embedding as a dict of exactly these two tensors (any other key,
            # even a name, breaks its loader); it is named after the file, as for its .safetensors.
            return write_atomic(path, lambda p: p.write_bytes(torch_zip_bytes(tensors)))
        header = {**emb.metadata, "token": emb.token}
        return save_tensors(tensors, path, header)
    vectors = emb.vectors[0]
    if a1111_image:
        return save_a1111_image(path, emb.token, vectors, **_a1111_fields(emb.metadata))
    if to == "diffusers":
        metadata = emb.metadata if suffix == SAFETENSORS_SUFFIX else None
        return save_diffusers_embedding(path, emb.token, vectors, metadata=metadata or None)
    return save_a1111_embedding(path, emb.token, vectors, **_a1111_fields(emb.metadata))


def _a1111_fields(meta: dict[str, str]) -> dict[str, Any]:
    """A1111's `step` / `sd_checkpoint_name` from textinv's trainer metadata (`textinv.step`, `textinv.base_model`)."""
    step = meta.get("step") or meta.get("textinv.step")
    base_model = meta.get("textinv.base_model")
    return {
        "step": int(step) if step is not None and step.isdigit() else None,
        "sd_checkpoint": meta.get("sd_checkpoint"),
        "sd_checkpoint_name": meta.get("sd_checkpoint_name") or (Path(base_model).name if base_model else None),
        "metadata": meta,
    }


def save_a1111_image(
    path: str | os.PathLike,
    token: str,
    vectors: torch.Tensor,
    *,
    step: int | None = None,
    sd_checkpoint: str | None = None,
    sd_checkpoint_name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write an AUTOMATIC1111 embedding image: a PNG whose `sd-ti-embedding` text chunk holds the embedding.

    The chunk is what A1111's own training writes ("save images with embedding in PNG chunks"): the .pt's
    dict as JSON, each tensor as `{"TORCHTENSOR": nested lists}`, base64-encoded. A1111 names the concept by
    the `name` inside (`token`). The picture is a card with the token, for people browsing the folder.
    """
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    tensor = vectors.detach().to("cpu", torch.float32)
    tensor = tensor.unsqueeze(0) if tensor.ndim == 1 else tensor
    data: dict[str, Any] = {
        "string_to_token": {"*": A1111_STAR_TOKEN_ID},
        "string_to_param": {"*": {"TORCHTENSOR": tensor.tolist()}},
        "name": token,
        "step": step,
        "sd_checkpoint": sd_checkpoint,
        "sd_checkpoint_name": sd_checkpoint_name,
    }
    extra = {k: v for k, v in (metadata or {}).items() if k not in ("step", "sd_checkpoint", "sd_checkpoint_name")}
    if extra:
        data["textinv_metadata"] = extra
    info = PngInfo()
    info.add_text(IMAGE_TEXT_CHUNK, base64.b64encode(json.dumps(data).encode("utf-8")).decode("ascii"))
    card = Image.new("RGB", (256, 256), (24, 24, 32))
    draw = ImageDraw.Draw(card)
    draw.text((12, 12), token, fill=(255, 255, 255))
    draw.text((12, 232), f"{tensor.shape[0]}v x {tensor.shape[1]}" + (f", {step} steps" if step else ""), fill="grey")
    return write_atomic(path, lambda p: card.save(p, format="PNG", pnginfo=info))


def torch_zip_bytes(obj: Any) -> bytes:
    """`torch.save(obj)` re-packed to hold only data.pkl, version and data/<n> (tensor bytes 64-aligned).

    Why: AUTOMATIC1111's safe-unpickle gate rejects any other archive member, and torch >= 2.1 adds
    several (byteorder, .format_version, ...). torch.load needs none of them on little-endian machines.
    """
    if sys.byteorder != "little":  # without a byteorder record, readers assume little-endian data
        raise TextinvError("writing .pt/.bin embeddings needs a little-endian machine; write .safetensors")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    out = io.BytesIO()
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if not _A1111_ALLOWED_MEMBER.match(info.filename):
                continue
            _write_aligned(dst, out, info.filename, src.read(info))
    return out.getvalue()


def _write_aligned(dst: zipfile.ZipFile, out: io.BytesIO, name: str, payload: bytes) -> None:
    """Add a stored member whose data starts on a 64-byte boundary, padding the local extra field."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header_end = out.tell() + 30 + len(name.encode("utf-8"))
    pad = (-(header_end + 4)) % _STORAGE_ALIGNMENT
    # Extra field id 0x5446 ("FT"), ignored by zip readers; torch's own writer pads the same way.
    info.extra = struct.pack("<HH", 0x5446, pad) + b"\0" * pad
    dst.writestr(info, payload)
