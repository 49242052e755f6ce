"""The model card every run writes, and pushing an output folder to the Hugging Face Hub."""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

from textinv.atomic import write_text_atomic
from textinv.errors import TextinvError
from textinv.layout import MODEL_CARD, embedding_stem
from textinv.models import ModelSource, as_toy_source, shareable_model_name, source_from_name, toy_family

log = logging.getLogger(__name__)


def write_model_card(
    output_dir: Path,
    *,
    base_model: ModelSource | str,
    placeholder_token: str,
    initializer_token: str,
    learnable_property: str,
    num_vectors: int,
    steps: int,
    validation_prompt: str | None = None,
    validation_images: list[Path] | None = None,
    repo_id: str | None = None,
    family: str = "sd1",
) -> Path:
    """README.md with YAML front matter (the Hub reads it) and how to use the embedding (`family` picks the
    pipeline class and, for SDXL, one `load_textual_inversion` per text encoder).

    Every snippet in it runs as written: from the folder that holds the output (or from anywhere once
    pushed to `repo_id`), with the base model named as `models.shareable_model_name` does, never by a local path.
    """
    output_dir = Path(output_dir)
    source = as_toy_source(base_model if isinstance(base_model, ModelSource) else source_from_name(base_model))
    name = shareable_model_name(source)
    load_from = repo_id or output_dir.resolve().name
    example = validation_prompt or (
        f"a photo of a {placeholder_token}"
        if learnable_property == "object"
        else f"a painting in the style of {placeholder_token}"
    )
    images = ""
    if validation_images:
        rel = [p.relative_to(output_dir).as_posix() for p in validation_images if p.is_relative_to(output_dir)]
        images = "\n## Validation images\n\n" + f"Prompt: `{example}`\n\n" + "\n".join(f"![]({r})" for r in rel)
        images += "\n"
    # The Hub checks `base_model` against its repos: only a hub id belongs there.
    front_base = f"base_model: {name}\n" if source.kind == "hub" else ""
    where = "" if repo_id else f"Run these from the folder that holds `{load_from}/`. "
    text = f"""---
license: creativeml-openrail-m
{front_base}tags:
- {"stable-diffusion-xl" if family == "sdxl" else "stable-diffusion"}
- text-to-image
- diffusers
- textual_inversion
- textinv
inference: true
---

# Textual inversion: `{placeholder_token}`

A learned {learnable_property} concept for `{name}`, trained with textinv for {steps} steps
({num_vectors} vector(s), initialised from `{initializer_token}`).

## Use it

{where}{_model_note(source, name)}

```python
{_python_usage(source, name, load_from, example, family, placeholder_token)}
```

Or from the command line:

```bash
{_cli_usage(source, name, load_from, repo_id, example)}
```
{images}"""
    return write_text_atomic(output_dir / MODEL_CARD, text)


def _model_note(source: ModelSource, name: str) -> str:
    if source.kind == "toy":
        twin = " (its SDXL-architecture twin)" if toy_family(source) == "sdxl" else ""
        return (
            f"The base model is textinv's embedded toy model{twin}, installed with textinv "
            f"(`{_toy_path_command(source)}` prints its folder)."
        )
    if source.kind == "hub":
        return f"The base model is [{name}](https://huggingface.co/{name})."
    kind = "file" if source.kind == "single_file" else "folder"
    return f"The base model `{name}` was a local {kind}: where it is not beside the concept, write its path instead."


def _python_usage(source: ModelSource, name: str, load_from: str, example: str, family: str, token: str) -> str:
    cls = "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
    if source.kind == "toy":
        head = f"from diffusers import {cls}\nfrom textinv.models import toy_model_dir\n\n"
        toy = toy_family(source)
        load = f"pipe = {cls}.from_pretrained(toy_model_dir({'' if toy == 'sd1' else repr(toy)}))"
    elif source.kind == "single_file":
        head = f"from diffusers import {cls}\n\n"
        load = f"pipe = {cls}.from_single_file({name!r})"
    else:
        head = f"from diffusers import {cls}\n\n"
        load = f"pipe = {cls}.from_pretrained({name!r})"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "", example.replace(" ", "-"))[:40] or "concept"
    return (
        f"{head}{load}\n{_load_calls(load_from, family, token)}\n"
        f"image = pipe({example!r}).images[0]\nimage.save({stem + '.png'!r})"
    )


def _load_calls(load_from: str, family: str, token: str) -> str:
    """diffusers' loading: the folder in one call, or for SDXL one call per text encoder (its two files)."""
    if family != "sdxl":
        return f"pipe.load_textual_inversion({load_from!r})"
    pairs = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    return "\n".join(
        f"pipe.load_textual_inversion({load_from!r}, weight_name={embedding_stem(i) + '.safetensors'!r}, "
        f"token={token!r},\n                            text_encoder=pipe.{encoder}, tokenizer=pipe.{tokenizer})"
        for i, (tokenizer, encoder) in enumerate(pairs)
    )


def _cli_usage(source: ModelSource, name: str, load_from: str, repo_id: str | None, example: str) -> str:
    model = f" --model {shlex.quote(name)}"
    if source.kind == "toy":
        # The SD 1 toy is `generate`'s default model; the SDXL twin is named by the folder it is in.
        model = "" if toy_family(source) == "sd1" else f' --model "$({_toy_path_command(source)})"'

    generate = f"textinv generate {shlex.quote(example)}{model} --concept {shlex.quote(load_from)}"
    # textinv reads concepts offline (it never downloads while generating): fetch a pushed one first.
    return f"hf download {shlex.quote(repo_id)}\n{generate}" if repo_id else generate


def _toy_path_command(source: ModelSource) -> str:
    family = toy_family(source)
    return "textinv toy path" if family == "sd1" else f"textinv toy path --family {family}"


def push_output_dir(output_dir: Path, *, repo_id: str | None, token: str | None) -> str:
    """Create the repo (if needed) and upload the output folder, checkpoints and logs excluded.

    The token goes only to huggingface_hub; it is never printed or logged.
    """
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    api = HfApi(token=token)
    repo = repo_id or output_dir.resolve().name
    try:
        url = api.create_repo(repo_id=repo, exist_ok=True)
        repo = getattr(url, "repo_id", repo)
        api.upload_folder(
            repo_id=repo,
            folder_path=str(output_dir),
            commit_message="Upload textual inversion embedding (textinv)",
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", "logs/**", ".*"],
        )
    except Exception as exc:  # huggingface_hub raises many types; messages never contain the token
        raise TextinvError(
            f"push to the Hub failed for {repo!r} ({type(exc).__name__}); the output is safe in {output_dir}; "
            "check `huggingface-cli login` or --hub_token and retry with `--push_to_hub`"
        ) from exc
    log.info("pushed %s to https://huggingface.co/%s", output_dir, repo)
    return repo
