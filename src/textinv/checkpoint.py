"""Resumable training state: `checkpoint-N/` folders written atomically, found, pruned and loaded.

A checkpoint holds the trainable rows, the optimizer and LR-scheduler state and the sampling counter.
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

import torch
from safetensors.torch import load_file, save_file

from textinv.atomic import atomic_dir
from textinv.errors import TextinvError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_JSON = "training_state.json"
ROWS_FILE = "learned_rows.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"


@dataclass
class TrainingState:
    """What a checkpoint records besides tensors."""

    global_step: int
    seed: int
    placeholder_token: str
    num_vectors: int
    embedding_dim: int
    samples_seen: int
    base_model: str
    # The CPU convolution kernels `--cpu_conv auto` chose, so a resumed run keeps them ("" if none),
    # and the shapes that run on the other kernels (`cpu_kernels.ConvPlan`).
    cpu_conv: str = ""
    cpu_conv_shapes: dict[str, str] = field(default_factory=dict)
    # Likewise the matrix-product kernels of `--cpu_matmul auto`.
    cpu_matmul: str = ""


def save_checkpoint(
    output_dir: Path, state: TrainingState, rows: torch.Tensor, optimizer, lr_scheduler, limit: int | None
) -> Path:
    """Write `checkpoint-<step>/` atomically, then prune the oldest beyond `limit`.

    Pruning runs after the new checkpoint is complete, so a crash never leaves fewer good checkpoints.
    """
    target = Path(output_dir) / f"checkpoint-{state.global_step}"
    with atomic_dir(target) as tmp:
        save_file({"rows": rows.detach().to("cpu", torch.float32).contiguous()}, str(tmp / ROWS_FILE))
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save(lr_scheduler.state_dict(), tmp / SCHEDULER_FILE)
        (tmp / STATE_JSON).write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    if limit is not None:
        for old in list_checkpoints(output_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    return target


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
    state: TrainingState
    rows: torch.Tensor
    optimizer_state: dict
    scheduler_state: dict


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Read a checkpoint with safe loaders only (safetensors, torch.load(weights_only=True))."""
    path = Path(path)
    try:
        state = TrainingState(**json.loads((path / STATE_JSON).read_text(encoding="utf-8")))
        rows = load_file(str(path / ROWS_FILE))["rows"]
        opt = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        sched = torch.load(path / SCHEDULER_FILE, map_location="cpu", weights_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise TextinvError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}); resume from an earlier checkpoint-N"
        ) from exc
    return LoadedCheckpoint(state=state, rows=rows, optimizer_state=opt, scheduler_state=sched)
