"""The command line's own behaviour: a bad flag is one line naming it and what it accepts; --help says all."""

from __future__ import annotations

import pytest
from helpers import run_cli

from textinv.cli import _all_parsers, build_parser


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["train", "--lr_scheduler", "foo"], "argument --lr_scheduler: invalid choice: 'foo' (choose from 'linear'"),
        (
            ["train", "--max_train_steps", "abc"],
            "--max_train_steps/--steps: expects a whole number (got 'abc')",
        ),
        (
            ["train", "--learnable_property", "thing"],
            "--learnable_property: invalid choice: 'thing' (choose from 'obj",
        ),
        (["train", "--report_to", "foo"], "argument --report_to: invalid choice: 'foo'"),
        (["generate", "x", "--guidance", "high"], "argument --guidance: expects a number (got 'high')"),
        (["nosuch"], "invalid choice: 'nosuch' (choose from 'train'"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it_and_its_allowed_values(capsys, argv, expected):
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert expected in err and "\n" not in err and "usage:" not in err
    assert captured.out == ""


def test_every_help_lists_debug_and_every_choice_flag_lists_its_choices():
    for parser in _all_parsers(build_parser()):
        text = parser.format_help()
        assert "--debug" in text, parser.prog
        for action in parser._actions:
            if action.choices and not hasattr(action.choices, "items"):  # sub-command maps list themselves
                listed = text.replace("\n", " ").replace(" ", "")
                assert all(str(c).replace(" ", "") in listed for c in action.choices), (parser.prog, action.dest)
    train_help = next(p for p in _all_parsers(build_parser()) if p.prog == "textinv train").format_help()
    assert "One of: linear, cosine, cosine_with_restarts" in " ".join(train_help.split())
