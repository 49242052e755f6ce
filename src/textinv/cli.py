"""The `textinv` command line: builds the parser from the command modules, maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence

from textinv import __version__
from textinv.commands import iter_command_modules
from textinv.cpu_runtime import configure_cpu_runtime
from textinv.errors import TextinvError


class UsageError(Exception):
    """A command line argparse cannot read; `main` prints it on one line instead of the whole usage."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it and what it accepts (not 40 lines of usage)."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {_plain(message)} (`{self.prog} --help` lists every flag)")


def _plain(message: str) -> str:
    """argparse's wording, with a type's name said as what it accepts."""
    found = re.search(r"invalid (int|float) value: (.*)$", message)
    if found:
        wanted = "a whole number" if found.group(1) == "int" else "a number"
        return message[: found.start()] + f"expects {wanted} (got {found.group(2)})"
    return message


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="textinv",
        description="Teach a Stable Diffusion model a new concept from a few images (textual inversion).",
    )
    parser.add_argument("--version", action="version", version=f"textinv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in iter_command_modules():
        module.register(sub)
    for command_parser in _all_parsers(parser):
        # `main` reads --debug before parsing; declared here so that every --help lists it.
        command_parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    return parser


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += _all_parsers(child)
    return found


def quiet_libraries() -> None:
    """Hide the libraries' loading bars and deprecation chatter; our own progress bar and errors remain."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # jax reports each accelerator plugin it did not find (no TPU on a CPU machine, ...); the run says its devices.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="diffusers")
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_cpu_runtime(argv)  # before any command imports torch: libgomp reads it once, when loaded
    # `--debug` anywhere shows full tracebacks; it is stripped before parsing so every command accepts it.
    debug = "--debug" in argv or os.environ.get("TEXTINV_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    if not debug:
        quiet_libraries()
    args.argv = argv  # what the user typed, for hints that repeat it (e.g. how to continue a stopped run)
    try:
        return int(args.func(args) or 0)
    except TextinvError as exc:
        if debug:
            raise
        print(f"textinv: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("textinv: interrupted", file=sys.stderr)
        return 130
