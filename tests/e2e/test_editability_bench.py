"""bench/editability.py on the shipped toy model, cut down to seconds: one concept, every background, its table."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO

from textinv.toy import world


def test_editability_bench_prints_a_cell_for_every_allowed_background(tmp_path):
    cmd = [
        sys.executable, str(REPO / "bench" / "editability.py"), "--concept", "white ring", "--train-background",
        "blue", "-n", "2", "--seed", "3", "--train-flags=--max_train_steps 2", "--generate-flags=--steps 2",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600, cwd=tmp_path).stdout
    assert "2 samples per prompt" in out and "--concept 'white ring'" in out
    header = re.search(r"^\| concept \(trained on\) \| train s \| prompt \| (.+) \|$", out, re.M)
    assert header and header.group(1).split(" | ") == list(world.BACKGROUNDS)
    learned = re.search(r"^\| white ring \(blue\) \| \d+ \| a <x> on a B background \| (.+) \|$", out, re.M)
    alone = re.search(r"^\|  \|  \| a SHAPE on a B background \| (.+) \|$", out, re.M)
    words = re.search(r"^\|  \|  \| a COLOUR SHAPE on a B background \| (.+) \|$", out, re.M)
    for row in (learned, alone, words):
        cells = row.group(1).split(" | ")
        # A white shape is never drawn on white: that cell is skipped, the other four are judged (0, 50 or 100 %).
        assert cells[0] == "—" and all(re.fullmatch(r"(0|50|100)% / (0|50|100)%", c) for c in cells[1:]), cells
    summary = re.search(r"learned cells meeting >= 70% concept and background: (\d) of 4 .*target: (ok|MISSED)\)", out)
    assert summary and (summary.group(2) == "ok") == (summary.group(1) == "4")
    drawable = re.search(
        r"of the (\d) cells the words themselves draw \(>= 70%\), the learned token meets the target in (\d)", out
    )
    assert drawable and int(drawable.group(2)) <= int(drawable.group(1)) <= 4
