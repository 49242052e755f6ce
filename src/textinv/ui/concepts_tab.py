"""The Concepts tab: the concepts under the output root, their validation images, downloads, delete."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from textinv.errors import TextinvError
from textinv.ui.concept_list import EXPORTS, delete_concept, export_concept, list_concepts
from textinv.ui.context import UiContext

HEADERS = ["folder", "token", "family", "vectors", "base model", "step"]


def _table(ctx: UiContext):
    import pandas as pd

    return pd.DataFrame([c.row() for c in list_concepts(ctx.output_root)], columns=HEADERS)


def build(ctx: UiContext, trained: list) -> None:
    table = gr.Dataframe(_table(ctx), headers=HEADERS, interactive=False, elem_id="concepts-table")
    with gr.Row():
        choice = gr.Dropdown(
            [c.folder.name for c in list_concepts(ctx.output_root)], label="Concept", elem_id="concepts-choice"
        )
        refresh = gr.Button("Refresh", size="sm")
    images = gr.Gallery(label="Validation images (last)", columns=4, height=200, elem_id="concepts-validation")
    with gr.Row():
        fmt = gr.Radio(list(EXPORTS), value=next(iter(EXPORTS)), label="Download as")
        export = gr.Button("Download", elem_id="concepts-export")
    exported = gr.File(label="File", elem_id="concepts-file")
    with gr.Accordion("Delete", open=False):
        confirm = gr.Textbox(label="Type the concept's folder name to confirm", elem_id="concepts-confirm")
        delete = gr.Button("Delete concept", variant="stop", elem_id="concepts-delete")
    note = gr.Markdown()

    def refreshed():
        names = [c.folder.name for c in list_concepts(ctx.output_root)]
        return _table(ctx), gr.update(choices=names, value=names[-1] if names else None)

    def shown(name: str | None) -> list[str]:
        found = [c for c in list_concepts(ctx.output_root) if c.folder.name == name]
        return [str(p) for p in found[0].validation] if found else []

    def exported_file(name: str | None, label: str) -> str:
        try:
            return str(export_concept(ctx.output_root, name or "", label, Path(tempfile.mkdtemp(prefix="textinv-"))))
        except TextinvError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def deleted(name: str | None, typed: str):
        try:
            delete_concept(ctx.output_root, name or "", typed or "")
        except TextinvError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return (*refreshed(), "", f"Deleted {name}.")

    refresh.click(refreshed, None, [table, choice], api_visibility="private")
    choice.change(shown, choice, images, api_visibility="private")
    export.click(exported_file, [choice, fmt], exported, api_visibility="private")
    delete.click(deleted, [choice, confirm], [table, choice, confirm, note], api_visibility="private")
    for event in trained:
        event.then(refreshed, None, [table, choice], api_visibility="private")
