"""The `textinv ui` page: three tabs over one server context."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from textinv.ui import concepts_tab, generate_tab, train_tab
from textinv.ui.context import UiContext

TITLE = "textinv"


def build_app(ctx: UiContext) -> gr.Blocks:
    """The Blocks app; its API has `/train`, `/resume`, `/stop` and `/generate`."""
    ctx.output_root.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title=TITLE) as app:
        model = ctx.model or "the embedded toy model"
        gr.Markdown(f"# textinv\nTeach **{model}** a new concept from 3-5 images. Output root: `{ctx.output_root}`")
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                parts = train_tab.build(ctx)
            # A page opened (or reloaded) during a run follows it live; when it ends, the other tabs list the concept.
            follow, outputs = parts["live"]
            trained = [*parts["trained"], app.load(follow, None, outputs, api_visibility="private")]
            with gr.Tab("Generate", id="generate"):
                generate_tab.build(ctx, trained)
            with gr.Tab("Concepts", id="concepts"):
                concepts_tab.build(ctx, trained)
    return app


def launch(app: gr.Blocks, ctx: UiContext, host: str, port: int, share: bool) -> None:
    """Serve until interrupted. Gradio may serve files only from the output root and its own cache."""
    app.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[str(Path(ctx.output_root).resolve())],
        ssr_mode=False,
        footer_links=["api"],
        show_error=True,
    )
