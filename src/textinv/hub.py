"""The model card every run writes, and pushing an output folder to the Hugging Face Hub."""

from __future__ import annotations

import logging
from pathlib import Path

from textinv.atomic import write_text_atomic
from textinv.errors import TextinvError
from textinv.layout import embedding_stem

log = logging.getLogger(__name__)


def write_model_card(
    output_dir: Path,
    *,
    base_model: str,
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
    pipeline class and, for SDXL, one `load_textual_inversion` per text encoder)."""
    output_dir = Path(output_dir)
    load_from = repo_id or str(output_dir)
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
    text = f"""---
license: creativeml-openrail-m
base_model: {base_model}
tags:
- {"stable-diffusion-xl" if family == "sdxl" else "stable-diffusion"}
- text-to-image
- diffusers
- textual_inversion
- textinv
inference: true
---

# Textual inversion: `{placeholder_token}`

A learned {learnable_property} concept for `{base_model}`, trained with
[textinv](https://github.com/) for {steps} steps ({num_vectors} vector(s), initialised from
`{initializer_token}`).

## Use it

```python
{_usage_code(family, base_model, load_from, placeholder_token, example)}
```

Or with textinv, every text encoder in one call: `textinv.load_concept(pipe, "{load_from}")`.

Or from the command line: `textinv generate "{example}" --model {base_model} --concept {load_from}`.
{images}"""
    return write_text_atomic(output_dir / "README.md", text)


def _usage_code(family: str, base_model: str, load_from: str, token: str, example: str) -> str:
    """The model card's Python: diffusers loads SDXL's two files one text encoder at a time."""
    if family != "sdxl":
        return f"""from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{base_model}")
pipe.load_textual_inversion("{load_from}")
image = pipe("{example}").images[0]"""
    loads = "\n".join(
        f'pipe.load_textual_inversion("{load_from}", weight_name="{embedding_stem(i)}.safetensors", token="{token}",\n'
        f"                            text_encoder=pipe.{encoder}, tokenizer=pipe.{tokenizer})"
        for i, (tokenizer, encoder) in enumerate((("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")))
    )
    return f"""from diffusers import StableDiffusionXLPipeline

pipe = StableDiffusionXLPipeline.from_pretrained("{base_model}")
{loads}
image = pipe("{example}").images[0]"""


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
