"""Timed CPU kernel plans, kept per machine so that seeded runs there always run the same kernels.

`--cpu_conv/--cpu_matmul auto` time the step's calls on each kernel set and keep the fastest. Under load the
timings, so the choice, so the last bits of what is learned, can differ between two runs of one command. With
`--seed` the first such run on a machine times and stores its plan (holding a lock, so concurrent first runs wait
for it and read the same plan); every later seeded run with the same calls, flags, threads and PyTorch reuses it.
Delete the folder (`plan_store_dir()`) to time again, e.g. after the machine changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textinv.atomic import write_text_atomic

CACHE_ENV = "TEXTINV_CACHE_DIR"
# Flags that change which calls a step makes or which kernel sets may run them.
_PLAN_FLAGS = ("cpu_conv", "cpu_matmul", "mixed_precision", "fp8_base", "torch_compile", "gradient_checkpointing")


def plan_store_dir() -> Path:
    """`$TEXTINV_CACHE_DIR/kernel-plans`, else the user's cache folder (`$XDG_CACHE_HOME` or ~/.cache)/textinv."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "textinv"
    return Path(root) / "kernel-plans"


def plan_key(cfg, calls: dict, threads: int, torch_version: str) -> str:
    """What a stored plan is valid for: this CPU, PyTorch, thread count, the step's calls and the kernel flags."""
    described = {
        "cpu": _cpu_name(),
        "torch": torch_version,
        "threads": threads,
        "flags": {name: getattr(cfg, name) for name in _PLAN_FLAGS},
        "calls": sorted(f"{call.op} {call.key} {call.input_grad} x{count}" for call, count in calls.items()),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class StoredPlan:
    path: Path
    state: dict[str, Any] | None  # the stored plan (`KernelPlan.to_state()`), None when none was stored yet

    def save(self, state: dict[str, Any]) -> None:
        if self.state is None:
            write_text_atomic(self.path, json.dumps(state, indent=2, sort_keys=True))


@contextlib.contextmanager
def locked_plan(key: str) -> Iterator[StoredPlan]:
    """The stored plan of `key`, read and (when absent) written under an exclusive lock on its lock file."""
    folder = plan_store_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    with open(folder / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                state = None  # none yet, or unreadable: time again and replace it
            yield StoredPlan(path, state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
