"""The JAX backend (`textinv train --backend jax`): Flax NNX text encoder and UNet, optax AdamW on the new rows.

Importing this package does not import jax; `require_jax()` turns a missing install into the one-line fix.
The modules below it import jax at their top, so import them only after `require_jax()`.
"""

from __future__ import annotations

import importlib.util

from textinv.errors import TextinvError

INSTALL_HINT = 'pip install -e ".[jax]"'
NEEDED = ("jax", "flax", "optax")


def require_jax() -> None:
    """Raise a one-line TextinvError naming the install command when jax, flax or optax is missing."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise TextinvError(f"--backend jax needs {' and '.join(missing)} (not installed); {INSTALL_HINT}")
