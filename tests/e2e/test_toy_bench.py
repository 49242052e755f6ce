"""bench/toy_model.py on the shipped toy model, cut down to seconds: its tables add up."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO

from textinv.toy import world


def test_toy_model_bench_reports_every_shape_and_the_worst_concept():
    cmd = [sys.executable, str(REPO / "bench" / "toy_model.py"), "--prompts", "2", "-n", "3", "--seed", "5"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    assert "2 random combinations" in out
    (rates,) = re.findall(r"^\| (\d+)% \| (\d+)% \| (\d+)% \|$", out, re.M)
    assert all(int(r) in (0, 50, 100) for r in rates)  # two prompts, one sample each
    assert "seeds 5-7" in out
    rows = re.findall(r"^\| (\w+) \| (\d+)% \| ([a-z0-9 ,]+) \| (\w+) (\w+) (\d+)% \|$", out, re.M)
    assert [r[0] for r in rows] == list(world.SHAPES)
    for shape, _read, mix, top, worst_shape, share in rows:
        parts = [(part.split()[0], int(part.split()[1])) for part in mix.split(", ")]
        counts = [k for _, k in parts]
        assert sum(counts) <= 3 and counts == sorted(counts, reverse=True)
        # The worst concept is the most frequent colour the judge named: "unclear" is no concept.
        named = [(c, k) for c, k in parts if c != "unclear"]
        assert worst_shape == shape
        if named:
            assert top == named[0][0] and int(share) == round(100 * named[0][1] / 3)
        else:
            assert int(share) == 0
    worst = max(int(r[5]) for r in rows)
    assert re.search(rf"worst initializer-alone score over all concepts: {worst}% \(target <= 40 %: (ok|MISSED)\)", out)
    assert ("MISSED" in out) == (worst > 40)


def test_toy_model_bench_every_cell_covers_every_allowed_prompt_and_lists_each_miss():
    cmd = [sys.executable, str(REPO / "bench" / "toy_model.py"), "--every-cell", "1", "--steps", "1", "-n", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    allowed = [(c, s, b) for c in world.COLOURS for s in world.SHAPES for b in world.BACKGROUNDS if world.allowed(c, b)]
    assert f"every one of the {len(allowed)} combinations" in out and "random combinations" not in out
    rows = re.findall(r"^\| (\w+) \| (.+) \|$", out, re.M)
    table = {colour: cells.split(" | ") for colour, cells in rows if colour in world.COLOURS}
    assert list(table) == list(world.COLOURS)
    for colour, cells in table.items():
        assert len(cells) == len(world.BACKGROUNDS)
        for background, cell in zip(world.BACKGROUNDS, cells, strict=True):
            assert (cell == "—") == (not world.allowed(colour, background))
            assert cell == "—" or re.fullmatch(r"\d+%", cell)
    (met,) = re.findall(rf"in >= 70 % of samples \(and on the asked background\): (\d+) of {len(allowed)}", out)
    misses = re.findall(r"^- (\w+ \w+) on (\w+): match (\d+)%", out, re.M)
    assert int(met) + len(misses) == len(allowed)
    assert all(int(m) in (0, 100) for *_, m in misses)  # one sample each


def test_toy_targets_bench_runs_the_cli_with_the_given_train_and_generate_flags():
    cmd = [sys.executable, str(REPO / "bench" / "toy_targets.py"), "--concept", "red circle", "--no-style", "-n", "2",
           "--train-flags=--max_train_steps 2", "--generate-flags=--steps 2 --guidance 2"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    assert "`textinv train` + `--max_train_steps 2` and `textinv generate` + `--steps 2 --guidance 2`" in out
    (row,) = re.findall(r"^\| red circle \| \d+ \| (\d+)% \| (\d+)% \| (\d+)% \| (\d+)% \| (ok|MISSED) \|$", out, re.M)
    assert all(int(rate) in (0, 50, 100) for rate in row[:4])  # two samples a prompt
