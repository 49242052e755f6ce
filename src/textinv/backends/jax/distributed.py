"""Multi-host runs (TPU pod slices, SLURM, Open MPI, or any launcher that sets the coordinator): one process
per host, each feeding its own devices' part of the global batch.

A run is multi-host when `JAX_COORDINATOR_ADDRESS` is set (then `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` give
the rest, unless a cluster is detected) or `TEXTINV_JAX_DISTRIBUTED=1` asks jax to detect the cluster itself.
"""

from __future__ import annotations

import os

import jax

from textinv.errors import TextinvError


def wants_distributed(environ=os.environ) -> bool:
    return bool(environ.get("JAX_COORDINATOR_ADDRESS")) or environ.get("TEXTINV_JAX_DISTRIBUTED", "") == "1"


def join_distributed(environ=os.environ) -> bool:
    """Call `jax.distributed.initialize` when the run is multi-host; False when it is not (nothing done).

    Must run before anything touches a jax device.
    """
    if not wants_distributed(environ):
        return False
    num = environ.get("JAX_NUM_PROCESSES")
    pid = environ.get("JAX_PROCESS_ID")
    try:
        jax.distributed.initialize(
            num_processes=int(num) if num else None,
            process_id=int(pid) if pid else None,
        )
    except (ValueError, RuntimeError) as exc:
        raise TextinvError(
            f"could not join the multi-host JAX run ({exc}); set JAX_COORDINATOR_ADDRESS=host:port, "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host, or unset them for a single-host run"
        ) from exc
    return True
