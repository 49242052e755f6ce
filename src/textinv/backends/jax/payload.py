"""The JAX backend's part of a checkpoint: the rows and optax's AdamW state, in one safetensors file.

Every array keeps its dtype and bits, so a resumed run continues exactly as the uninterrupted one. A torch
checkpoint (optimizer.pt) has no such file; resuming it here, or this one with the torch backend, is refused
in one line by `checkpoint_backend`'s callers rather than failing deep in a loader.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from textinv.backends.jax.step import TrainState
from textinv.errors import TextinvError
from textinv.safetensors_file import save_arrays

STATE_FILE = "jax_state.safetensors"
TORCH_OPTIMIZER_FILE = "optimizer.pt"
FORMAT = "1"


def checkpoint_backend(folder: Path) -> str:
    """Which backend wrote checkpoint `folder`: "jax", "torch", or "" if neither's state is there."""
    folder = Path(folder)
    if (folder / STATE_FILE).is_file():
        return "jax"
    return "torch" if (folder / TORCH_OPTIMIZER_FILE).is_file() else ""


def require_backend(folder: Path, backend: str) -> None:
    """Refuse, in one line, to resume a checkpoint written by the other backend."""
    wrote = checkpoint_backend(folder)
    if wrote and wrote != backend:
        raise TextinvError(
            f"checkpoint {folder} was written by --backend {wrote}; resume it with --backend {wrote}, "
            f"or start a new run with --backend {backend} in another --output_dir"
        )


def _named_leaves(state: TrainState) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save(folder: Path, state: TrainState) -> Path:
    """Write `state` (on the host) into `folder`, which the caller renames into place atomically."""
    target = Path(folder) / STATE_FILE
    return save_arrays(_named_leaves(state), target, {"backend": "jax", "format": FORMAT})


def load(folder: Path, template: TrainState) -> TrainState:
    """Read the state in `folder` into the structure of `template` (same optimizer, same number of vectors)."""
    folder = Path(folder)
    require_backend(folder, "jax")
    try:
        saved = load_file(str(folder / STATE_FILE))
    except (OSError, SafetensorError) as exc:
        raise TextinvError(
            f"checkpoint {folder} is unreadable ({type(exc).__name__}); resume from an earlier checkpoint-N"
        ) from exc
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    restored = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        array = saved.get(name)
        if array is None or array.shape != np.shape(leaf) or array.dtype != np.asarray(leaf).dtype:
            raise TextinvError(
                f"checkpoint {folder} does not match this run's optimizer state ({name}); "
                "resume with the flags it was trained with"
            )
        restored.append(array)
    return jax.tree_util.tree_unflatten(treedef, restored)
