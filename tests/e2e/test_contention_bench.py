"""bench/contention.py end to end on a tiny pipeline: textinv alone and beside a busy process, one table."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO


def test_contention_bench_times_textinv_alone_and_beside_a_busy_process(tmp_path):
    cmd = [
        sys.executable, str(REPO / "bench" / "contention.py"), "--size", "tiny", "--steps", "2", "--warmup", "1",
        "--trainers", "textinv", "--no-record", "--cache", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = re.findall(r"^\| textinv \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)× \| — \| — \|$", done.stdout, re.M)
    alone, busy, slow = map(float, row)
    # the times are printed to 0.01 s: the slow-down lies within what those roundings allow
    assert (busy - 0.005) / (alone + 0.005) - 0.005 <= slow <= (busy + 0.005) / (alone - 0.005) + 0.005
    assert re.search(r"textinv contended [\d.]+ s/step \(competitor got \d+ CPU s\)", done.stdout)
