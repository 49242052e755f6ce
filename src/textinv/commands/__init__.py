"""One module per `textinv` sub-command; each exposes `register(subparsers)`.

A module registers its parser and sets `func` (args -> exit code) as the parser default.
"""

from __future__ import annotations

import importlib

# Listed by module name so that a sub-command's heavy imports happen only when it runs.
COMMAND_MODULES = ("train", "generate", "convert", "inspect", "toy", "demo", "ui")


def iter_command_modules():
    """Yield the command modules that exist in this installation, in help order."""
    for name in COMMAND_MODULES:
        try:
            yield importlib.import_module(f"textinv.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"textinv.commands.{name}":
                raise
