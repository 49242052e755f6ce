"""The Train tab's settings, generated from `TrainConfig` (no second list of flags): kinds, values, command line.

Gradio-free, so the mapping from widgets to config values is tested without a browser.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Any

from textinv.config import config_fields, field_type
from textinv.errors import TextinvError

# Set by the page itself rather than typed in: the uploads, the run folder under --output-root, the server's
# --model, the Resume button; a hub token is a secret a page must not hold (use `huggingface-cli login`).
SET_BY_THE_PAGE = (
    "pretrained_model_name_or_path",
    "train_data_dir",
    "placeholder_token",
    "initializer_token",
    "learnable_property",
    "template_file",
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "hub_token",
    "local_rank",
)
# The settings a user actually changes, shown outside the "advanced" panel, in this order.
BASIC = (
    "max_train_steps",
    "learning_rate",
    "num_vectors",
    "resolution",
    "train_batch_size",
    "validation_prompt",
    "validation_steps",
)


@dataclass(frozen=True)
class FieldSpec:
    """One `TrainConfig` field as a widget: `kind` is bool, int, float, str or choice."""

    name: str
    kind: str
    optional: bool
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


def field_specs() -> dict[str, FieldSpec]:
    """Every field of `TrainConfig` the page shows, by name, in the config's order."""
    specs = {}
    for f in config_fields():
        if f.name in SET_BY_THE_PAGE:
            continue
        hint = field_type(f)
        choices = tuple(f.metadata.get("choices", ()))
        kind = "choice" if choices else {bool: "bool", int: "int", float: "float"}.get(hint, "str")
        optional = f.default is None
        specs[f.name] = FieldSpec(f.name, kind, optional, f.default, f.metadata["help"], choices)
    return specs


def advanced_names() -> list[str]:
    return [name for name in field_specs() if name not in BASIC]


def recommended_values(model: str | None, learnable_property: str) -> dict[str, Any]:
    """Each field's value as a run would take it: the model's recommended settings over the config defaults."""
    from textinv.models import model_defaults, resolve_model_source

    values = {f.name: f.default for f in config_fields()}
    source = resolve_model_source(model)
    values.update({k: v for k, v in model_defaults(source, "train", learnable_property).items() if k in values})
    return values


def to_config_value(spec: FieldSpec, raw: Any) -> Any:
    """A widget's value (Gradio numbers are floats, empty boxes "") → the field's type; one-line error if not."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if spec.optional:
            return None
        if spec.kind == "bool":
            return False
        raise TextinvError(f"{spec.label}: give a value (default {spec.default})")
    if spec.kind == "bool":
        return bool(raw)
    if spec.kind in ("str", "choice"):
        return str(raw).strip()
    try:
        number = float(raw)
    except (TypeError, ValueError):
        raise TextinvError(f"{spec.label}: {raw!r} is not a number") from None
    if spec.kind == "float":
        return number
    if not math.isfinite(number) or number != int(number):
        raise TextinvError(f"{spec.label}: {raw!r} is not a whole number")
    return int(number)


def given_settings(values: dict[str, Any], recommended: dict[str, Any]) -> dict[str, Any]:
    """The page's settings that differ from what the run would take anyway: the flags a user "gave"."""
    specs = field_specs()
    given = {}
    for name, raw in values.items():
        value = to_config_value(specs[name], raw)
        if value != recommended.get(name):
            given[name] = value
    return given


def command_line(given: dict[str, Any]) -> str:
    """The `textinv train ...` line that runs the same training (flags in the config's order)."""
    parts = ["textinv", "train"]
    for f in config_fields():
        if f.name not in given or given[f.name] is None or f.name == "hub_token":
            continue
        value = given[f.name]
        if field_type(f) is bool:
            if value:
                parts.append(f"--{f.name}")
            continue
        parts += [f"--{f.name}", shlex.quote(str(value))]
    return " ".join(parts)
