"""Training backends: what runs the gradient path (frozen text encoder(s) + UNet, loss, the rows' update).

Everything else — images, the VAE posterior cache, prompts, the counter-based sample stream, checkpoint
bookkeeping, output files, validation sampling — is shared and lives outside. `pytorch.TorchBackend` is the
default; a backend's own checkpoint payload (optimizer state...) is written and read by the backend.
"""

from typing import Any

BACKENDS = ("torch", "jax")


def prepare(cfg) -> bool:
    """What a backend checks or joins before anything loads (the JAX backend's one-line refusals, a multi-host
    run's join). True on the host that writes the outputs."""
    if cfg.backend != "jax":
        return True
    from textinv.backends import jax as jax_backend
    from textinv.backends.jax.distributed import join_distributed

    jax_backend.require_jax()
    jax_backend.check_flags(cfg)
    join_distributed()
    import jax

    return jax.process_index() == 0


def num_replicas(cfg, accelerator) -> int:
    """How many copies of the batch one step takes: processes (torch, through Accelerate) or devices (jax)."""
    if cfg.backend != "jax":
        return accelerator.num_processes
    from textinv.backends.jax.trainer import data_parallel_size

    return data_parallel_size()


def build(cfg, accelerator, family, source, pipe, noise_scheduler, weight_dtype, total_steps: int) -> Any:
    """The run's backend: owns the optimizer of `family.rows` and runs the training step's maths."""
    if cfg.backend == "jax":
        from textinv.backends.jax.trainer import JaxTrainBackend
        from textinv.models import snapshot_dir

        return JaxTrainBackend(cfg, family, snapshot_dir(source, cfg.revision), pipe, noise_scheduler, total_steps)
    from textinv.backends.pytorch import TorchBackend

    return TorchBackend(cfg, accelerator, family, pipe.unet, noise_scheduler, weight_dtype, total_steps)
