"""Resumable training state: `checkpoint-N/` folders written atomically, found, pruned and loaded.

A checkpoint holds the trainable rows, the backend's payload (optimizer and LR-scheduler state) and the
sampling counter.
Sampling is counter-based (see `data.SampleStream`), so the counter and the seed *are* the RNG state:
a resumed run draws exactly what the uninterrupted run would have drawn.
We write our own small state rather than `accelerator.save_state`, which would store the whole
123M-parameter text encoder on every checkpoint and write in place (a kill could leave it half-written).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from textinv.atomic import atomic_dir
from textinv.errors import TextinvError
from textinv.safetensors_file import save_tensors

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_JSON = "training_state.json"
ROWS_FILE = "learned_rows.safetensors"


@dataclass
class TrainingState:
    """What a checkpoint records besides tensors."""

    global_step: int
    seed: int
    placeholder_token: str
    num_vectors: int
    embedding_dims: list[int]  # one width per text encoder that learns rows
    samples_seen: int
    base_model: str
    backend: str = "torch"
    # The backend's CPU kernel plan (`cpu_kernels.KernelPlan.to_state()`), so a resumed run keeps the same kernels.
    kernel_plan: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingState:
        """Read a state, including those of checkpoints written before the kernel plan and families were fields."""
        data = dict(data)
        if "embedding_dim" in data:
            data["embedding_dims"] = [data.pop("embedding_dim")]
        old_plan = {k: data.pop(k) for k in ("cpu_conv", "cpu_conv_shapes", "cpu_matmul") if k in data}
        data.setdefault("kernel_plan", old_plan)
        return cls(**data)


def save_checkpoint(
    output_dir: Path, state: TrainingState, rows: list[torch.Tensor], write_payload, limit: int | None
) -> Path:
    """Write `checkpoint-<step>/` atomically (the backend adds its payload: `write_payload(folder)`), then prune
    the oldest beyond `limit`.

    Pruning runs after the new checkpoint is complete, so a crash never leaves fewer good checkpoints.
    """
    target = Path(output_dir) / f"checkpoint-{state.global_step}"
    with atomic_dir(target) as tmp:
        tensors = {_rows_key(i): r.detach().to("cpu", torch.float32).contiguous() for i, r in enumerate(rows)}
        save_tensors(tensors, tmp / ROWS_FILE)
        write_payload(tmp)
        (tmp / STATE_JSON).write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    if limit is not None:
        for old in list_checkpoints(output_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _rows_key(index: int) -> str:
    """`rows` for the first text encoder's rows (as checkpoints always had), `rows_2`... for the next ones."""
    return "rows" if index == 0 else f"rows_{index + 1}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders of interrupted writes are not listed)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_JSON).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def remove_interrupted_writes(output_dir: Path) -> None:
    """Delete temp folders left by a checkpoint write that was killed."""
    for p in Path(output_dir).glob(".checkpoint-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def resolve_resume(output_dir: Path, resume: str) -> Path | None:
    """`latest` → newest checkpoint or None (start fresh, as diffusers does); else a checkpoint folder."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    for candidate in (Path(resume), Path(output_dir) / Path(resume).name):
        if candidate.is_dir():
            if not (candidate / STATE_JSON).is_file():
                raise TextinvError(
                    f"{candidate} is not a textinv checkpoint (no {STATE_JSON}); "
                    "use --resume_from_checkpoint latest or a checkpoint-N folder"
                )
            return candidate
    raise TextinvError(
        f"checkpoint {resume!r} not found (looked in . and {output_dir}); "
        "use --resume_from_checkpoint latest or an existing checkpoint-N"
    )


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainingState
    rows: list[torch.Tensor]


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Read a checkpoint's state and rows with safe loaders only; the backend reads its own payload."""
    path = Path(path)
    try:
        state = TrainingState.from_json(json.loads((path / STATE_JSON).read_text(encoding="utf-8")))
        tensors = load_file(str(path / ROWS_FILE))
        rows = [tensors[_rows_key(i)] for i in range(len(state.embedding_dims))]
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise TextinvError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}); resume from an earlier checkpoint-N"
        ) from exc
    return LoadedCheckpoint(path=path, state=state, rows=rows)
