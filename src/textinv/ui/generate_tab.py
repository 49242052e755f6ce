"""The Generate tab: prompt, settings, concepts to load (trained here or uploaded), a gallery; the `/generate` API."""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from textinv.errors import TextinvError
from textinv.ui.concept_list import concept_folder, list_concepts
from textinv.ui.context import UiContext
from textinv.ui.generation import GenerateRequest


def concept_choices(ctx: UiContext) -> list[str]:
    return [c.folder.name for c in list_concepts(ctx.output_root)]


def latest_concept(ctx: UiContext) -> list[str]:
    """The concept just trained (the last run's folder), preselected after training."""
    status = ctx.worker.status
    if status.output_dir is not None and status.output_dir.name in concept_choices(ctx):
        return [status.output_dir.name]
    return []


def generate(
    ctx: UiContext,
    prompt: str,
    num_images: float = 4,
    seed: float = 0,
    negative_prompt: str = "",
    steps: float | None = None,
    guidance: float | None = None,
    concepts: list[str] | None = None,
    concept_files: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    try:
        sources = [str(concept_folder(ctx.output_root, name)) for name in concepts or []]
        sources += [str(f) for f in concept_files or []]
        request = GenerateRequest(
            prompt=prompt or "",
            num_images=int(num_images),
            seed=int(seed),
            negative_prompt=negative_prompt or None,
            steps=int(steps) if steps else None,
            guidance=float(guidance) if guidance else None,
        )
        paths = ctx.generator.generate(request, sources, ctx.generated_dir)
    except TextinvError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    return [str(p) for p in paths], [str(p) for p in paths]


def build(ctx: UiContext, trained: list) -> None:
    from textinv.models import resolve_model_source
    from textinv.sample import model_recipe

    recipe = model_recipe(resolve_model_source(ctx.model))
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", placeholder="a photo of a <my-star>", elem_id="gen-prompt")
            negative = gr.Textbox(value="", label="Negative prompt", elem_id="gen-negative")
            with gr.Row():
                num_images = gr.Number(value=4, precision=0, minimum=1, label="Images", elem_id="gen-n")
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="gen-seed")
                steps = gr.Number(value=recipe.num_inference_steps, precision=0, minimum=1, label="Steps")
                guidance = gr.Number(value=recipe.guidance_scale, label="Guidance")
        with gr.Column(scale=1):
            # Custom values: an API client names concepts trained after this page was built; unknown ones are
            # refused by concept_folder with one line.
            concepts = gr.Dropdown(
                choices=concept_choices(ctx),
                value=[],
                multiselect=True,
                allow_custom_value=True,
                label="Concepts",
                elem_id="gen-concepts",
            )
            refresh = gr.Button("Refresh concepts", size="sm")
            files = gr.File(
                label="Or upload concept files (.safetensors, .bin, .pt, A1111 images)",
                file_count="multiple",
            )
    button = gr.Button("Generate", variant="primary", elem_id="gen-button")
    gallery = gr.Gallery(
        label="Images", columns=8, height=260, object_fit="contain", elem_id="gen-gallery", format="png"
    )
    downloads = gr.File(label="Download (PNG with `parameters` metadata)", elem_id="gen-downloads")
    inputs = [prompt, num_images, seed, negative, steps, guidance, concepts, files]
    button.click(functools.partial(generate, ctx), inputs, [gallery, downloads], api_name="generate")

    def after_training() -> Any:
        return gr.update(choices=concept_choices(ctx), value=latest_concept(ctx))

    refresh.click(lambda: gr.update(choices=concept_choices(ctx)), None, concepts, api_visibility="private")
    for event in trained:
        event.then(after_training, None, concepts, api_visibility="private")
