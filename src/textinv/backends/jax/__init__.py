"""The JAX backend (`textinv train --backend jax`): Flax NNX text encoder and UNet, optax AdamW on the new rows.

Importing this package does not import jax; `require_jax()` turns a missing install into the one-line fix.
The modules below it import jax at their top, so import them only after `require_jax()`.
"""

from __future__ import annotations

import importlib.util

from textinv.errors import TextinvError

INSTALL_HINT = 'pip install -e ".[jax]"'
NEEDED = ("jax", "flax", "optax")
FP16_REFUSAL = (
    "--backend jax trains with --mixed_precision no or bf16, not fp16 (fp16 needs loss scaling, "
    "which only the torch backend has); use --mixed_precision bf16"
)


def require_jax() -> None:
    """Raise a one-line TextinvError naming the install command when jax, flax or optax is missing."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
        raise TextinvError(f"--backend jax needs {names} (not installed); {INSTALL_HINT}")


# Flags of the torch backend with no JAX meaning: refused, not silently ignored. (flag, is it set?, why)
TORCH_ONLY_FLAGS = (
    ("--enable_xformers_memory_efficient_attention", lambda c: c.enable_xformers_memory_efficient_attention,
     "XLA fuses attention itself"),
    ("--torch_compile", lambda c: c.torch_compile != "no", "the JAX step is always compiled by XLA"),
    ("--fp8_base", lambda c: c.fp8_base, "use --mixed_precision bf16 for lighter frozen weights"),
    ("--cpu_conv", lambda c: c.cpu_conv != "auto", "XLA picks its own CPU kernels"),
    ("--cpu_matmul", lambda c: c.cpu_matmul != "auto", "XLA picks its own CPU kernels"),
)  # fmt: skip


# The settings above, by field name: a model's recommended values for them (textinv.json) are torch advice.
TORCH_ONLY_SETTINGS = (
    "enable_xformers_memory_efficient_attention", "torch_compile", "fp8_base", "cpu_conv", "cpu_matmul",
)  # fmt: skip


def check_flags(cfg) -> None:
    """Refuse, in one line, a flag the JAX backend cannot honour (`cfg` is a `TrainConfig`)."""
    for flag, is_set, why in TORCH_ONLY_FLAGS:
        if is_set(cfg):
            raise TextinvError(f"{flag} is a torch-backend flag ({why}); drop it or use --backend torch")
    if cfg.mixed_precision == "fp16":
        raise TextinvError(FP16_REFUSAL)
