"""textinv: teach a Stable Diffusion model a new concept by textual inversion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from textinv.concepts import load_concept as load_concept


def __getattr__(name: str) -> Any:
    # Lazy so that `import textinv` (and `textinv --help`) stays fast: torch is heavy.
    if name == "load_concept":
        from textinv.concepts import load_concept

        return load_concept
    raise AttributeError(name)
