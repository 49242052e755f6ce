"""Finding and loading a Stable Diffusion model: diffusers folder, cached hub id, single file, toy default.

Also reads a model's recommended textinv settings (model families: `textinv.families`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textinv.errors import TextinvError
from textinv.families import single_file_is_sdxl

log = logging.getLogger(__name__)

TOY_MODEL_DIR = Path(__file__).resolve().parent / "toy" / "model"
# A model folder may carry recommended textinv settings (`{"train": {...}, "generate": {...}}`);
# they replace the diffusers defaults for flags the user did not give. The toy model uses this.
DEFAULTS_FILE = "textinv.json"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives and what kind of source it is."""

    path_or_id: str
    kind: str  # "folder" | "hub" | "single_file" | "toy"

    @property
    def is_local(self) -> bool:
        return self.kind in ("folder", "single_file", "toy")


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_hub_id(text: str) -> bool:
    """`owner/name` as the Hugging Face Hub spells repo ids (models and concepts alike); paths never match."""
    return bool(_HUB_ID.match(text)) and not text.endswith((".safetensors", ".bin", ".pt", ".ckpt"))


# The name the embedded toy model goes by in shared files (model cards, metadata, PNG infotext).
TOY_MODEL_NAME = "textinv-toy"
# Model families the embedded toy model exists for (`textinv toy path --family`): the SD 1 model and its
# SDXL-architecture twin, trained by the same recipe (`textinv toy build --family sdxl`).
TOY_MODEL_DIRS = {"sd1": TOY_MODEL_DIR, "sdxl": TOY_MODEL_DIR.parent / "model-sdxl"}
TOY_MODEL_NAMES = {"sd1": TOY_MODEL_NAME, "sdxl": "textinv-toy-sdxl"}


def toy_model_available() -> bool:
    return (TOY_MODEL_DIR / "model_index.json").is_file()


def toy_model_dir(family: str = "sd1") -> Path:
    """The embedded toy model's diffusers folder for `family`: what `textinv toy path` prints.

    Why a function: a model card or a script can load the toy model in plain diffusers
    (`StableDiffusionPipeline.from_pretrained(toy_model_dir())`) without knowing where textinv is installed.
    """
    if family not in TOY_MODEL_DIRS:
        raise TextinvError(f"no embedded toy model for family {family!r}; choose one of {', '.join(TOY_MODEL_DIRS)}")
    return TOY_MODEL_DIRS[family]


def toy_family(source: ModelSource | str) -> str | None:
    """The family of the embedded toy model that `source` is (named, or by its folder's path), else None."""
    name = source.path_or_id if isinstance(source, ModelSource) else source
    for family, toy_name in TOY_MODEL_NAMES.items():
        if name == toy_name:
            return family
    if not name:
        return "sd1"
    resolved = Path(name).expanduser().resolve()
    return next((family for family, folder in TOY_MODEL_DIRS.items() if folder.resolve() == resolved), None)


def as_toy_source(source: ModelSource) -> ModelSource:
    """`source` as a "toy" source where it is an embedded toy model's folder given by path, else unchanged.

    Why: `--pretrained_model_name_or_path $(textinv toy path --family sdxl)` is a folder to the loader, but
    shared files must name it as the toy model (`textinv-toy-sdxl`) and tell how to find it, never by its path.
    """
    if source.kind not in ("folder", "toy"):
        return source
    family = toy_family(source)
    return ModelSource(str(TOY_MODEL_DIRS[family]), "toy") if family else source


def shareable_model_name(source: ModelSource | str) -> str:
    """The model's name as it may appear in files that are shared: a hub id, or a folder's or file's name.

    Never a local path (it would reveal a user name and a machine's layout): the embedded toy model is
    `textinv-toy`, a folder in the Hugging Face cache is its hub id, any other folder or file its own name.
    A plain string is read as `--pretrained_model_name_or_path` would be, without checking that it exists.
    """
    if isinstance(source, str):
        source = source_from_name(source)
    source = as_toy_source(source)
    if source.kind == "toy":
        return TOY_MODEL_NAMES[toy_family(source) or "sd1"]
    if source.kind == "hub":
        return source.path_or_id
    path = Path(source.path_or_id).expanduser().resolve()
    # A hub snapshot: .../models--ORG--NAME/snapshots/<commit>
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/", 1)
    return path.name


def source_from_name(name: str) -> ModelSource:
    """What kind of source a model name is, as `resolve_model_source` would read it, without checking it exists."""
    family = toy_family(name)
    if family is not None:
        return ModelSource(str(TOY_MODEL_DIRS[family]), "toy")
    path = Path(name).expanduser()
    if path.exists() or path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        return ModelSource(name, "single_file" if path.suffix.lower() in SINGLE_FILE_SUFFIXES else "folder")
    return ModelSource(name, "hub")


def resolve_model_source(name_or_path: str | None) -> ModelSource:
    """Decide what `--pretrained_model_name_or_path` points at; None means the embedded toy model."""
    if not name_or_path:
        if not toy_model_available():
            raise TextinvError(
                "no model given and the embedded toy model is not installed; "
                "pass --pretrained_model_name_or_path PATH_OR_HUB_ID"
            )
        return ModelSource(str(TOY_MODEL_DIR), "toy")
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise TextinvError(
                f"{p} is not a Stable Diffusion pipeline folder (no model_index.json); "
                "point --pretrained_model_name_or_path at a diffusers folder, hub id or .safetensors file"
            )
        return ModelSource(str(p), "folder")
    if p.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not p.is_file():
            raise TextinvError(f"model file {p} does not exist; check the path")
        return ModelSource(str(p), "single_file")
    if p.exists():
        raise TextinvError(
            f"{p} is not a Stable Diffusion model (expected a diffusers folder or a .safetensors/.ckpt file)"
        )
    if looks_like_hub_id(name_or_path):
        return ModelSource(name_or_path, "hub")
    raise TextinvError(f"model {name_or_path!r} not found: no such folder or file, and not a hub id")


def snapshot_dir(source: ModelSource, revision: str | None = None) -> Path | None:
    """The local folder of a model source (hub ids resolved from the local cache only)."""
    if source.kind in ("folder", "toy"):
        return Path(source.path_or_id)
    if source.kind == "hub":
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(source.path_or_id, revision=revision, local_files_only=True))
        except Exception:
            # Not cached: let diffusers try (it downloads when online, or explains).
            return None
    return None


def model_defaults(source: ModelSource, section: str, learnable_property: str | None = None) -> dict[str, Any]:
    """The model's recommended settings for `section` ("train" or "generate"), or {}.

    A section may hold per-property overrides, `"by_property": {"style": {...}}`: a style concept
    may want other settings than an object on the same model. They apply for `learnable_property`.
    """
    folder = snapshot_dir(source)
    if folder is None or not (folder / DEFAULTS_FILE).is_file():
        return {}
    try:
        data = json.loads((folder / DEFAULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TextinvError(f"{folder / DEFAULTS_FILE} is not valid JSON ({exc}); fix or delete it") from exc
    settings = dict(data.get(section, {}))
    by_property = settings.pop("by_property", {})
    if not (isinstance(by_property, dict) and all(isinstance(v, dict) for v in by_property.values())):
        raise TextinvError(
            f'{folder / DEFAULTS_FILE}: "{section}.by_property" must map a property to settings, '
            'e.g. {"style": {"learning_rate": 0.01}}; fix or delete it'
        )
    if learnable_property is not None:
        settings.update(by_property.get(learnable_property, {}))
    return settings


def _dtype_keyword() -> str:
    """`dtype` where diffusers takes it (it deprecated `torch_dtype` in 2026, after transformers), else `torch_dtype`.

    Feature-tested rather than version-tested: the release that added it resolves the old name through
    `_resolve_dtype`; older releases (down to our lower bound) know only `torch_dtype`.
    """
    import diffusers.utils

    return "dtype" if hasattr(diffusers.utils, "_resolve_dtype") else "torch_dtype"


def load_pipeline(
    source: ModelSource,
    *,
    revision: str | None = None,
    variant: str | None = None,
    torch_dtype: Any = None,
    on_cpu: bool = False,
):
    """Load a StableDiffusionPipeline (or XL) from any source, offline-first, with one-line errors.

    `on_cpu`: the pipeline runs on the CPU, where a half `torch_dtype` is cast here a tensor at a time from the
    memory-mapped file (`weight_cast`: diffusers' bits, without the whole fp32 file resident beside its copy).
    """
    import diffusers
    import torch

    cast_here = on_cpu and torch_dtype is not None and torch_dtype != torch.float32
    kwargs: dict[str, Any] = {_dtype_keyword(): None if cast_here else torch_dtype}
    try:
        if source.kind == "single_file":
            cls = diffusers.StableDiffusionPipeline
            if single_file_is_sdxl(Path(source.path_or_id)):
                cls = diffusers.StableDiffusionXLPipeline
            pipe = cls.from_single_file(source.path_or_id, **kwargs)
        else:
            folder = snapshot_dir(source, revision)
            target = str(folder) if folder is not None else source.path_or_id
            if source.kind == "hub" and folder is None:
                kwargs["revision"] = revision
            if variant:
                kwargs["variant"] = variant
            pipe = diffusers.DiffusionPipeline.from_pretrained(
                target, safety_checker=None, requires_safety_checker=False, **kwargs
            )
    except TextinvError:
        raise
    except Exception as exc:  # diffusers raises many types; the user needs one line
        if source.kind == "single_file" and _hub_unreachable(exc):
            raise TextinvError(_single_file_offline_message(Path(source.path_or_id))) from exc
        if source.kind == "hub" and _hub_unreachable(exc):
            raise TextinvError(_hub_offline_message(source.path_or_id, revision, variant)) from exc
        raise TextinvError(
            f"could not load a Stable Diffusion model from {source.path_or_id!r}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipe, part, None) is None:
            raise TextinvError(
                f"{source.path_or_id} is not a Stable Diffusion pipeline (it has no {part}); use an SD 1.x/2.x/XL model"
            )
    if cast_here:
        from textinv.weight_cast import cast_frozen_weights

        modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
        dropped = cast_frozen_weights(modules, torch_dtype)
        log.debug("cast the weights to %s; %.2f GB of file pages given back", torch_dtype, dropped / 1e9)
    return pipe


# The files diffusers' `from_single_file` reads from its architecture's hub repo: configs and tokenizer vocabularies
# (fnmatch's `*` crosses folders, so these also match unet/config.json).
SINGLE_FILE_CONFIG_PATTERNS = ("*.json", "*.txt")


def single_file_config_repo(path: Path) -> str | None:
    """The hub repo whose configs diffusers builds this single-file checkpoint with (by its architecture), or None.

    Read from the safetensors header (key names and shapes) with diffusers' own rule, never the weights.
    """
    try:
        from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS, infer_diffusers_model_type
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            shapes = {key: _Shape(tuple(f.get_slice(key).get_shape())) for key in f.keys()}
        return DIFFUSERS_DEFAULT_PIPELINE_PATHS[infer_diffusers_model_type(shapes)]["pretrained_model_name_or_path"]
    except Exception:  # not a safetensors file, or a diffusers without these helpers: the message does without
        return None


@dataclass(frozen=True)
class _Shape:
    """What diffusers' architecture rule reads of a tensor: its shape."""

    shape: tuple[int, ...]


def _hub_unreachable(exc: BaseException) -> bool:
    """Whether loading failed because the Hugging Face Hub could not be reached (offline, no network)."""
    seen: BaseException | None = exc
    while seen is not None:
        # By name: huggingface_hub moved these classes between modules across the versions textinv allows.
        names = {cls.__name__ for cls in type(seen).__mro__}
        if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"} or any("Connect" in n for n in names):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _single_file_offline_message(path: Path) -> str:
    """Why a single file did not load offline, and the command that fixes it."""
    repo = single_file_config_repo(path)
    if repo is None:
        return (
            f"{path} is a single-file checkpoint: diffusers builds it with its architecture's configs from the "
            "Hugging Face Hub, which are not in the local cache and the Hub cannot be reached; run once online "
            "(they are cached after) or use a diffusers folder"
        )
    return (
        f"{path} is a single-file checkpoint: diffusers builds it with the configs of {repo} from the Hugging Face "
        f"Hub, which are not in the local cache and the Hub cannot be reached; fetch them once (a few MB) where "
        f"it can be: {download_configs_command(repo)}"
    )


def _hub_offline_message(repo: str, revision: str | None, variant: str | None) -> str:
    """Why a hub id did not load offline, and the one line of Python that caches what diffusers loads of it."""
    given = "".join(f", {name}={value!r}" for name, value in (("revision", revision), ("variant", variant)) if value)
    fetch = f"from diffusers import DiffusionPipeline; DiffusionPipeline.download({repo!r}{given})"
    return (
        f"model {repo} is not (fully) in the local Hugging Face cache and the Hub cannot be reached; fetch it once "
        f'where it can be (only the files diffusers loads): python -c "{fetch}", or pass a local diffusers folder'
    )


def download_configs_command(repo: str) -> str:
    """The command that caches `repo`'s configs, spelled for the installed huggingface_hub's CLI.

    `hf` came in 0.34 (before: `huggingface-cli`); from 1.0 it takes one pattern per --include, before it took
    several after one --include (a repeated flag kept only the last).
    """
    import huggingface_hub

    version = tuple(int(part) for part in re.findall(r"\d+", huggingface_hub.__version__)[:2])
    if version >= (1, 0):
        return f"hf download {repo} " + " ".join(f'--include "{p}"' for p in SINGLE_FILE_CONFIG_PATTERNS)
    cli = "hf" if version >= (0, 34) else "huggingface-cli"
    return f"{cli} download {repo} --include " + " ".join(f'"{p}"' for p in SINGLE_FILE_CONFIG_PATTERNS)
