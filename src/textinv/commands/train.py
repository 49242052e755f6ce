"""`textinv train`: the diffusers-compatible flags, built from `TrainConfig`'s fields."""

from __future__ import annotations

import argparse
import logging
import types
import typing

from textinv.config import TrainConfig, build_config, config_fields

log = logging.getLogger("textinv")


def _flag_type(field) -> type | None:
    hint = field.type if not isinstance(field.type, str) else eval(field.type, vars(typing), {})  # noqa: S307
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="learn a new token's embedding from a folder of images",
        description=(
            "Textual inversion, drop-in for diffusers' examples/textual_inversion/textual_inversion.py: "
            "every flag of that script is accepted with the same meaning and default. "
            "Flags you omit take the model's recommended settings when it ships them (the toy model does)."
        ),
        argument_default=argparse.SUPPRESS,  # so we know which flags the user actually gave
    )
    for field in config_fields():
        meta = field.metadata
        names = [f"--{field.name}", *meta.get("aliases", ())]
        hint = _flag_type(field)
        default = f" (default: {field.default})" if field.default not in (None, False) else ""
        if hint is bool:
            parser.add_argument(*names, action="store_true", help=meta["help"] + default)
        elif "choices" in meta:
            choices = f" One of: {', '.join(meta['choices'])}."
            parser.add_argument(*names, type=hint, choices=meta["choices"], help=meta["help"] + choices + default)
        else:
            parser.add_argument(*names, type=hint, help=meta["help"] + default, metavar=field.name.upper())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textinv.config import precision_warning, settings_from_model
    from textinv.models import DEFAULTS_FILE, model_defaults, resolve_model_source
    from textinv.train import train

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "debug")}
    source = resolve_model_source(given.get("pretrained_model_name_or_path"))
    if source.kind == "toy":
        log.info(
            "textinv: no --pretrained_model_name_or_path given; using the embedded toy model (%s)",
            source.path_or_id,
        )
    recommended = model_defaults(source, "train", given.get("learnable_property", TrainConfig.learnable_property))
    cfg = build_config(given, recommended)
    from_model = settings_from_model(given, recommended)
    if from_model:
        values = ", ".join(f"--{k} {v}" for k, v in from_model.items())
        log.info("textinv: from the model's %s (your flags win over it): %s", DEFAULTS_FILE, values)
    warning = precision_warning(cfg.mixed_precision, _device_type())
    if warning:
        log.warning("textinv: warning: %s", warning)
    result = train(cfg)
    log.info("textinv: saved %s (step %d, loss %.4f)", result.embedding_path, result.global_step, result.final_loss)
    return 0


def _device_type() -> str:
    """Where Accelerate will train: "cpu" when told so or when no accelerator is present."""
    import os

    import torch

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    if (mps is not None and mps.is_available()) or (xpu is not None and xpu.is_available()):
        return "accelerator"
    return "cpu"
