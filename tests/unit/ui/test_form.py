"""The Train tab's settings come from TrainConfig: every flag present once, values typed, the command line exact."""

from __future__ import annotations

import shlex

import pytest

from textinv.cli import build_parser
from textinv.config import build_config, config_fields
from textinv.errors import TextinvError
from textinv.ui import form


def test_every_config_field_is_on_the_page_exactly_once():
    names = [f.name for f in config_fields()]
    specs = form.field_specs()
    assert set(specs) | set(form.SET_BY_THE_PAGE) == set(names)
    assert not set(specs) & set(form.SET_BY_THE_PAGE)
    assert set(form.BASIC) <= set(specs)
    assert sorted(form.advanced_names() + list(form.BASIC)) == sorted(specs)
    assert list(specs) == [n for n in names if n in specs]  # the config's order


def test_specs_carry_the_configs_types_choices_help_and_defaults():
    specs = form.field_specs()
    assert specs["max_train_steps"].kind == "int" and specs["max_train_steps"].default == 5000
    assert specs["learning_rate"].kind == "float"
    assert specs["gradient_checkpointing"].kind == "bool"
    assert specs["lr_scheduler"].kind == "choice" and "cosine" in specs["lr_scheduler"].choices
    assert specs["validation_prompt"].kind == "str" and specs["validation_prompt"].optional
    assert specs["seed"].optional and specs["seed"].kind == "int"
    fields = {f.name: f for f in config_fields()}
    assert all(spec.help == fields[name].metadata["help"] for name, spec in specs.items())


def test_recommended_values_are_the_toy_models_settings_per_property():
    obj = form.recommended_values(None, "object")
    style = form.recommended_values(None, "style")
    assert obj["learning_rate"] == 0.003 and obj["resolution"] == 32 and obj["max_train_steps"] == 600
    assert style["learning_rate"] == 0.01 and style["snr_gamma"] == 0
    assert obj["adam_beta1"] == 0.9  # not in the model's file: the config default


def test_widget_values_become_typed_settings_and_only_changes_are_given():
    recommended = form.recommended_values(None, "object")
    given = form.given_settings(
        {"max_train_steps": 5.0, "learning_rate": 0.003, "seed": "", "validation_prompt": "a <t>", "scale_lr": True},
        recommended,
    )
    assert given == {"max_train_steps": 5, "validation_prompt": "a <t>", "scale_lr": True}
    assert isinstance(given["max_train_steps"], int)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [("max_train_steps", 2.5, "not a whole number"), ("learning_rate", "fast", "not a number"),
     ("max_train_steps", None, "give a value")],
)  # fmt: skip
def test_bad_widget_values_are_one_line_errors(name, raw, message):
    with pytest.raises(TextinvError, match=message):
        form.to_config_value(form.field_specs()[name], raw)


def test_command_line_runs_the_same_config():
    given = {
        "placeholder_token": "<my star>",
        "initializer_token": "star",
        "train_data_dir": "runs/my star/images",
        "output_dir": "runs/my star",
        "max_train_steps": 5,
        "learning_rate": 0.01,
        "validation_prompt": "a photo of a <my star>",
        "scale_lr": True,
        "seed": None,
    }
    line = form.command_line(given)
    assert line.startswith("textinv train ")
    args = build_parser().parse_args(shlex.split(line)[1:])
    fields = {f.name for f in config_fields()}
    parsed = {k: v for k, v in vars(args).items() if k in fields}
    assert build_config(parsed) == build_config({k: v for k, v in given.items() if v is not None})


def test_initializer_check_as_you_type_follows_the_librarys_rule():
    from textinv.ui.train_tab import check_initializer

    assert check_initializer(None, "star").startswith("✓ *star* is one token")
    assert check_initializer(None, "orange star").startswith("✓ every word is one token")
    assert "'zxq' is 2 tokens" in check_initializer(None, "zxq")
    assert "e.g. *star*" in check_initializer(None, "  ")
