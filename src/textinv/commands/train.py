"""`textinv train`: the diffusers-compatible flags, built from `TrainConfig`'s fields."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal

from textinv.config import TrainConfig, config_fields, field_type

log = logging.getLogger("textinv")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="learn a new token's embedding from a folder of images",
        description=(
            "Textual inversion, drop-in for diffusers' examples/textual_inversion/textual_inversion.py (SD 1.x/2.x) "
            "and textual_inversion_sdxl.py (SDXL: the token's rows learn in both text encoders and are saved as "
            "learned_embeds.safetensors + learned_embeds_2.safetensors): every flag of those scripts is accepted "
            "with the same meaning and default. "
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
        elif "choices" in meta:
            choices = f" One of: {', '.join(meta['choices'])}."
            parser.add_argument(*names, type=hint, choices=meta["choices"], help=meta["help"] + choices + default)
        else:
            parser.add_argument(*names, type=hint, help=meta["help"] + default, metavar=field.name.upper())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textinv.config import config_for_model
    from textinv.models import DEFAULTS_FILE, resolve_model_source

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "argv", "debug")}
    source = resolve_model_source(given.get("pretrained_model_name_or_path"))
    if source.kind == "toy":
        log.info(
            "textinv: no --pretrained_model_name_or_path given; using the embedded toy model (%s)",
            source.path_or_id,
        )
    cfg, from_model = config_for_model(given)
    if from_model:
        values = ", ".join(f"--{k} {v}" for k, v in from_model.items())
        log.info("textinv: from the model's %s (your flags win over it): %s", DEFAULTS_FILE, values)
    result = train_until_done_or_interrupted(cfg)
    if result.stopped:
        again = continue_command(getattr(args, "argv", None))
        log.info(
            "textinv: stopped at step %d; checkpoint-%d saved; continue with: %s",
            result.global_step,
            result.global_step,
            again,
        )
        return 130
    log.info("textinv: saved %s (step %d, loss %.4f)", result.embedding_path, result.global_step, result.final_loss)
    return 0


def train_until_done_or_interrupted(cfg: TrainConfig):
    """`train()` with a progress bar, where the first Ctrl-C asks the run to stop at the next step boundary
    (checkpoint and embedding saved) and a second one interrupts at once."""
    from textinv.progress import StopRequest
    from textinv.reporting import ProgressBar
    from textinv.train import train

    stop, bar = StopRequest(), ProgressBar()

    def on_interrupt(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.request()

    previous = signal.signal(signal.SIGINT, on_interrupt) if _in_main_thread() else None
    try:
        return train(cfg, subscribers=[bar], stop=stop)
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def continue_command(argv: list[str] | None) -> str:
    """The command line that continues a stopped run: the same flags, resuming from its latest checkpoint."""
    argv = list(argv or ["train", "..."])
    if not any(a == "--resume_from_checkpoint" or a.startswith("--resume_from_checkpoint=") for a in argv):
        argv += ["--resume_from_checkpoint", "latest"]
    return shlex.join(["textinv", *argv])
