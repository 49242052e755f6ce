"""The Train tab: uploads, token fields, settings generated from `TrainConfig`, live progress; the `/train` API."""

from __future__ import annotations

import functools
import inspect
import time
from pathlib import Path
from typing import Any

import gradio as gr

from textinv.config import build_config
from textinv.errors import TextinvError
from textinv.ui import form, render
from textinv.ui.context import UiContext
from textinv.ui.uploads import new_run_dir, sort_uploads, stage_run_inputs

POLL_SECONDS = 0.5
# The /train API's parameters, in order: the issue names the first four; every other one is optional.
LEADING = ("images", "placeholder_token", "initializer_token", "max_train_steps")


def widget(spec: form.FieldSpec, value: Any) -> gr.components.Component:
    """A Gradio input for one config field, showing the run's value (the model's recommendation) filled in."""
    common = {"label": spec.label, "info": spec.help, "elem_id": f"cfg-{spec.name}"}
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if spec.kind == "choice":
        return gr.Dropdown(choices=list(spec.choices), value=value, **common)
    if spec.kind in ("int", "float"):
        return gr.Number(value=value, precision=0 if spec.kind == "int" else None, **common)
    return gr.Textbox(value=value or "", **common)


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str | None):
    from transformers import CLIPTokenizer

    from textinv.models import resolve_model_source, snapshot_dir

    folder = snapshot_dir(resolve_model_source(model))
    if folder is None or not (folder / "tokenizer").is_dir():
        return None
    return CLIPTokenizer.from_pretrained(folder / "tokenizer")


def check_initializer(model: str | None, text: str) -> str:
    """The as-you-type check: each word one token (several words start the vectors in turn), or the library's
    one-line message."""
    from textinv.tokens import initializer_ids

    words = text.split()
    if not words:
        return "One existing word close to the concept, e.g. *star* or *toy* (several words: one per vector)."
    tokenizer = _tokenizer(model)
    if tokenizer is None:
        return "Checked when training starts (this model's tokenizer is not in a folder)."
    try:
        initializer_ids(tokenizer, text, num_vectors=len(words))
    except TextinvError as exc:
        return f"⚠️ {exc}"
    if len(words) == 1:
        return f"✓ *{words[0]}* is one token."
    return f"✓ every word is one token; with {len(words)} vectors each starts as one word, in order."


def preview(files: list[str] | None) -> tuple[list[str], str]:
    uploads = sort_uploads(files)
    return [str(p) for p in uploads.images], uploads.summary() if files else ""


def _updates(status, command: str) -> tuple:
    file = str(status.embedding_path) if status.embedding_path and status.embedding_path.is_file() else None
    return (
        render.progress_html(status),
        render.loss_frame(status),
        [str(p) for p in status.validation],
        file,
        command,
        render.status_text(status),
    )


def _follow(ctx: UiContext, command: str, raise_failure: bool = True):
    """Yield the page's updates until the run ends; a failed run ends as an error (for API clients too)."""
    status = ctx.worker.poll()
    yield _updates(status, command)
    while status.active:
        time.sleep(POLL_SECONDS)
        status = ctx.worker.poll()
        yield _updates(status, command)
    if status.state == "failed" and raise_failure:
        raise gr.Error(status.error or "training failed", print_exception=False)


def reattach(ctx: UiContext):
    """On page load: show the server's run (a reloaded or second page picks up the live view where it is)."""
    command = form.command_line(ctx.last_given) if ctx.last_given else ""
    yield from _follow(ctx, command, raise_failure=False)


def start_training(ctx: UiContext, names: list[str], *args: Any):
    values = dict(zip(names, args, strict=True))
    images, template = values.pop("images"), values.pop("template_file")
    token = (values.pop("placeholder_token") or "").strip()
    initializer = (values.pop("initializer_token") or "").strip()
    prop = values.pop("learnable_property") or "object"
    try:
        if not token or not initializer:
            raise TextinvError("fill in the placeholder token (e.g. <my-star>) and the initializer word (e.g. star)")
        recommended = form.recommended_values(ctx.model, prop)
        settings = form.given_settings(values, recommended)
        run_dir = new_run_dir(ctx.output_root, token)
        given = {"placeholder_token": token, "initializer_token": initializer, "learnable_property": prop}
        if ctx.model:
            given["pretrained_model_name_or_path"] = ctx.model
        given |= {**settings, "output_dir": str(run_dir)}
        given["train_data_dir"] = "(uploads)"
        if template:
            given["template_file"] = str(template)
        build_config(given, recommended).validate()  # a bad value or template is refused before anything is written
        images_dir, template_path = stage_run_inputs(sort_uploads(images), run_dir, template)
        given["train_data_dir"] = str(images_dir)
        if template_path:
            given["template_file"] = str(template_path)
        ctx.worker.start(given)
    except TextinvError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    ctx.last_given = given
    yield from _follow(ctx, form.command_line(given))


def resume_training(ctx: UiContext):
    if ctx.last_given is None:
        raise gr.Error("nothing to resume: start a training first", print_exception=False)
    given = {**ctx.last_given, "resume_from_checkpoint": "latest"}
    try:
        ctx.worker.start(given)
    except TextinvError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    yield from _follow(ctx, form.command_line(given))


def stop_training(ctx: UiContext) -> str:
    ctx.worker.stop()
    return "Stopping after the current step (a checkpoint is saved)…" if ctx.worker.poll().active else ""


def _named(fn, names: list[str]):
    """`fn(*values)` with a signature naming each value, so Gradio's API shows `/train(images, ...)`."""

    def call(*args):
        yield from fn(*args)

    # After the required three, every parameter defaults to None, so API clients may leave any of them out.
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind, **({} if i < 3 else {"default": None})) for i, n in enumerate(names)]
    call.__signature__ = inspect.Signature(params)
    return call


def build(ctx: UiContext) -> dict[str, Any]:
    """Lay out the tab; returns the components other tabs listen to."""
    specs = form.field_specs()
    recommended = form.recommended_values(ctx.model, "object")
    with gr.Row():
        with gr.Column(scale=1):
            images = gr.File(
                label="Images (3-5; IMAGE.txt captions optional)",
                file_count="multiple",
                file_types=["image", ".txt"],
                elem_id="train-images",
            )
            gallery = gr.Gallery(label="Preview", columns=5, height=160, elem_id="train-preview")
            upload_note = gr.Markdown(elem_id="train-upload-note")
            template = gr.File(label="Template file (optional: [name], [filewords])", file_types=[".txt"])
        with gr.Column(scale=1):
            token = gr.Textbox(label="Placeholder token", placeholder="<my-star>", elem_id="train-token")
            init = gr.Textbox(label="Initializer word", placeholder="star", elem_id="train-init")
            init_note = gr.Markdown(check_initializer(ctx.model, ""), elem_id="train-init-note")
            prop = gr.Radio(["object", "style"], value="object", label="What to learn", elem_id="train-property")
            basic = {name: widget(specs[name], recommended[name]) for name in form.BASIC}
    with gr.Accordion("Advanced (every other `textinv train` flag)", open=False):
        advanced = {name: widget(specs[name], recommended[name]) for name in form.advanced_names()}
    with gr.Row():
        train_btn = gr.Button("Train", variant="primary", elem_id="train-button")
        stop_btn = gr.Button("Stop", elem_id="stop-button")
        resume_btn = gr.Button("Resume", elem_id="resume-button")
    progress = gr.HTML(render.progress_html(ctx.worker.status), elem_id="train-progress")
    status = gr.Markdown(elem_id="train-status")
    with gr.Row():
        loss = gr.LinePlot(render.loss_frame(ctx.worker.status), x="step", y="loss", title="Loss", height=240)
        validation = gr.Gallery(label="Validation images", columns=4, height=240, elem_id="train-validation")
    embedding = gr.File(label="Learned embedding", elem_id="train-embedding")
    command = gr.Code(label="The same run from the command line", language="shell", elem_id="train-command")

    images.change(preview, images, [gallery, upload_note], api_visibility="private")
    init.change(functools.partial(check_initializer, ctx.model), init, init_note, api_visibility="private")
    settings = {**basic, **advanced}

    def refill(p: str) -> list:
        values = form.recommended_values(ctx.model, p)
        return [values[name] for name in settings]

    prop.change(refill, prop, list(settings.values()), api_visibility="private")
    names = [*LEADING, *[n for n in form.BASIC if n not in LEADING], "learnable_property", "template_file"]
    names += form.advanced_names()
    components = {"images": images, "placeholder_token": token, "initializer_token": init}
    components |= {**settings, "learnable_property": prop, "template_file": template}
    outputs = [progress, loss, validation, embedding, command, status]
    run = _named(functools.partial(start_training, ctx, names), names)
    train_event = train_btn.click(run, [components[n] for n in names], outputs, api_name="train")
    resume_event = resume_btn.click(functools.partial(resume_training, ctx), None, outputs, api_name="resume")
    stop_btn.click(functools.partial(stop_training, ctx), None, status, api_name="stop")
    return {
        "trained": [train_event, resume_event],
        "embedding": embedding,
        "output_root": Path(ctx.output_root),
        "live": (functools.partial(reattach, ctx), outputs),
    }
