"""`TrainConfig` checks that argparse cannot make: every caller (CLI, textinv.json, library) gets them."""

from __future__ import annotations

import pytest

from textinv.config import TrainConfig, build_config, precision_warning, settings_from_model
from textinv.errors import TextinvError

REQUIRED = {"train_data_dir": "d", "placeholder_token": "<t>", "initializer_token": "star"}


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("report_to", "foo", "--report_to must be one of tensorboard, wandb, comet_ml, all, none (got 'foo')"),
        ("lr_scheduler", "warm", "--lr_scheduler must be one of linear, cosine"),
        ("mixed_precision", "fp8", "--mixed_precision must be one of no, fp16, bf16"),
    ],
)
def test_a_value_outside_a_flags_choices_names_that_flag(field, value, expected):
    with pytest.raises(TextinvError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**REQUIRED, **{field: value}).validate()


def test_fp16_on_a_cpu_gets_a_one_line_warning_with_the_reason_and_bf16_suggested():
    warning = precision_warning("fp16", "cpu")
    assert "no fast fp16 arithmetic" in warning and "--mixed_precision bf16" in warning and "\n" not in warning
    assert [precision_warning(p, d) for p, d in (("bf16", "cpu"), ("no", "cpu"), ("fp16", "cuda"))] == [None] * 3


def test_settings_from_model_are_those_the_user_did_not_give():
    recommended = {"max_train_steps": 600, "learning_rate": 3e-3, "not_a_flag": 1}
    given = {**REQUIRED, "learning_rate": 1e-2}
    assert settings_from_model(given, recommended) == {"max_train_steps": 600}
    cfg = build_config(given, recommended)
    assert (cfg.max_train_steps, cfg.learning_rate) == (600, 1e-2)
