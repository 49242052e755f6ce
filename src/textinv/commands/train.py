"""`textinv train`: the diffusers-compatible flags, built from `TrainConfig`'s fields."""

from __future__ import annotations

import argparse
import logging

from textinv.config import TrainConfig, build_config, config_fields, field_type

log = logging.getLogger("textinv")


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
        hint = field_type(field)
        default = f" (default: {field.default})" if field.default not in (None, False) else ""
        if hint is bool:
            parser.add_argument(*names, action="store_true", help=meta["help"] + default)
        else:
            kwargs = {"type": hint, "help": meta["help"] + default, "metavar": field.name.upper()}
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            parser.add_argument(*names, **kwargs)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textinv.models import model_defaults, resolve_model_source
    from textinv.train import train

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    source = resolve_model_source(given.get("pretrained_model_name_or_path"))
    if source.kind == "toy":
        log.info(
            "textinv: no --pretrained_model_name_or_path given; using the embedded toy model (%s)",
            source.path_or_id,
        )
    recommended = model_defaults(source, "train", given.get("learnable_property", TrainConfig.learnable_property))
    cfg = build_config(given, recommended)
    result = train(cfg)
    log.info("textinv: saved %s (step %d, loss %.4f)", result.embedding_path, result.global_step, result.final_loss)
    return 0
