"""`textinv ui`: the web app (train, generate, concepts) on this machine; needs the `ui` extra (gradio)."""

from __future__ import annotations

import argparse
import logging
import socket

from textinv.errors import TextinvError

log = logging.getLogger("textinv")

INSTALL_HINT = 'the web UI needs gradio, which the base install leaves out; install it with: pip install "textinv[ui]"'


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ui",
        help="train and try concepts in the browser (Gradio)",
        description="Start the textinv web app: Train, Generate and Concepts tabs, and an API for gradio_client "
        "(/train, /generate). It listens on 127.0.0.1 only, unless --host says otherwise.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--model",
        default=None,
        help="model to train and generate with: diffusers folder, cached hub id or .safetensors (default: the toy)",
    )
    p.add_argument(
        "--output-root",
        "--output_root",
        dest="output_root",
        default="textinv-ui",
        help="folder for trainings (one sub-folder per concept) and generated images (default textinv-ui/)",
    )
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (anyone with it can use)")
    p.set_defaults(func=run)


def check_port(host: str, port: int) -> None:
    """A busy port is one line naming the fix, not Gradio's retry loop and traceback."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise TextinvError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None


def run(args: argparse.Namespace) -> int:
    try:
        # Not just `import gradio`: a folder named gradio in the working directory (Gradio's own /tmp/gradio
        # cache, say) imports as an empty namespace package.
        from gradio import Blocks  # noqa: F401
    except ImportError:
        raise TextinvError(INSTALL_HINT) from None
    from textinv.models import resolve_model_source
    from textinv.ui.app import build_app, launch
    from textinv.ui.context import UiContext

    if not 0 < args.port < 65536:
        raise TextinvError(f"--port must be 1-65535 (got {args.port})")
    resolve_model_source(args.model)  # a bad --model is one line now, not an error in every tab later
    check_port(args.host, args.port)
    if args.share:
        log.warning(
            "textinv: --share makes a public link: anyone who has it can train, generate and delete concepts "
            "on this machine"
        )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("textinv: listening on %s: other machines on the network can use this app", args.host)
    ctx = UiContext(model=args.model, output_root=args.output_root)
    launch(build_app(ctx), ctx, args.host, args.port, args.share)
    return 0
