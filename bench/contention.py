"""How much a shared CPU slows `textinv train` and diffusers' reference textual_inversion.py (issue 23).

A laptop always runs something else. Each trainer runs twice on the same SD-1.5-sized pipeline as
`train_speed.py` builds (random weights, 256 px, fp32, batch 1): alone, and beside one competing
CPU-bound process started just before it and stopped just after. Steps/s are taken the same way as in
`train_speed.py` (steptimer's time stamps over the steps after the warm-up), so loading is excluded.

The competitor (`--competitor`):
- `loop`  one Python process spinning on one core (a browser tab, a compile, an indexer);
- `torch` another PyTorch process multiplying matrices on every core with PyTorch's default OpenMP
  settings (another training job on the same machine).

The table gives each trainer's slow-down (contended s/step over solo s/step) and textinv's steps/s as a
multiple of the reference's, alone and under the same contention. Targets (issue 23): slow-down <= 2.5x
for textinv, and >= 2x the reference's steps/s in both columns. With `--rounds N` every measurement is
taken N times, the trainers' order reversed every other round, and medians are reported.

    python bench/contention.py --reference PATH/TO/textual_inversion.py
    python bench/contention.py --reference ... --competitor torch --rounds 2
    python bench/contention.py --size tiny --steps 3 --no-record     # seconds, for developing the bench
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import train_speed as ts

COMPETITORS = {
    "loop": "while True:\n    pass\n",
    "torch": ("import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a = torch.tanh(a @ a)\n"),
}


def start_competitor(kind: str) -> subprocess.Popen:
    """The competing process; its environment is the machine's default (no textinv settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_"))}
    return subprocess.Popen([sys.executable, "-c", COMPETITORS[kind]], env=env, stdout=subprocess.DEVNULL)


def stop_competitor(proc: subprocess.Popen) -> float:
    """Stop it and return the CPU seconds it used (what it got of the machine beside the trainer)."""
    proc.kill()
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = -9
    return usage.ru_utime + usage.ru_stime


def measure(args, trainer: str, contended: bool, model: Path, data: Path, shim: list[str]) -> dict:
    """One trainer run, alone or beside the competitor: steady s/step, or None with the reason."""
    label = f"{trainer}-{'contended' if contended else 'solo'}"
    out = args.cache / "contention" / label
    shutil.rmtree(out, ignore_errors=True)
    flags = ts.trainer_flags(
        model,
        data,
        out,
        resolution=args.resolution,
        steps=ts.LONG_RUN,
        precision="fp32",
        gradient_checkpointing=False,
        seed=args.seed,
    )
    env = {"TQDM_MININTERVAL": "5", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    # textinv's seeded runs share one timed kernel plan per machine; a store of the bench's own makes the first
    # textinv run (alone, in round 1) time it, as a user's first run would on an idle machine.
    env["TEXTINV_CACHE_DIR"] = str(args.cache / "contention" / "textinv-cache")
    if trainer == "textinv":
        path = os.pathsep.join(filter(None, [str(ts.REPO / "src"), os.environ.get("PYTHONPATH")]))
        tail, env["PYTHONPATH"] = ["-m", "textinv", "train"], path
    else:
        tail = [*shim, str(args.reference)]
    print(f"contention: running {label} ...", file=sys.stderr)
    competitor = start_competitor(args.competitor) if contended else None
    try:
        needed = args.warmup + args.steps
        result = ts.run_trainer(label, tail, flags, args.cache / "contention", "fp32", env, args.timeout, needed)
    finally:
        competitor_cpu = stop_competitor(competitor) if competitor else None
    row = {"trainer": trainer, "contended": contended, "s_step": None, "error": None, "competitor_cpu": competitor_cpu}
    try:
        row["s_step"] = 1 / ts.steady_rate(result.step_times, args.warmup, args.steps)
    except ValueError as e:
        row["error"] = f"{e}; see {result.log_path}"
    return row


def summarise(rounds: list[list[dict]]) -> dict[tuple[str, bool], float | None]:
    """Median s/step per (trainer, contended) over rounds; None when any round failed."""
    keys = {(r["trainer"], r["contended"]) for rows in rounds for r in rows}
    out = {}
    for key in keys:
        values = [r["s_step"] for rows in rounds for r in rows if (r["trainer"], r["contended"]) == key]
        out[key] = statistics.median(values) if values and None not in values else None
    return out


def format_table(med: dict[tuple[str, bool], float | None], trainers: list[str], competitor: str) -> str:
    def f(v, fmt, suffix=""):
        return "—" if v is None else format(v, fmt) + suffix

    ref_solo, ref_busy = med.get(("reference", False)), med.get(("reference", True))
    lines = [
        f"| trainer | s/step alone | s/step beside `{competitor}` | slow-down | steps/s vs reference, alone "
        "| steps/s vs reference, contended |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in trainers:
        solo, busy = med.get((t, False)), med.get((t, True))
        slow = busy / solo if solo and busy else None
        vs_solo = ref_solo / solo if ref_solo and solo else None
        vs_busy = ref_busy / busy if ref_busy and busy else None
        lines.append(
            f"| {t} | {f(solo, '.2f')} | {f(busy, '.2f')} | {f(slow, '.2f', '×')} | "
            f"{f(vs_solo, '.2f', '×')} | {f(vs_busy, '.2f', '×')} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("sd15", "tiny"), default="sd15", help="model size (default: sd15)")
    p.add_argument("--resolution", type=int, help="default: 256 (32 for --size tiny)")
    p.add_argument("--competitor", choices=tuple(COMPETITORS), default="loop", help="default: loop")
    p.add_argument("--warmup", type=int, default=2, help="steps not timed (default 2)")
    p.add_argument("--steps", type=int, default=8, help="timed steps after warm-up (default 8)")
    p.add_argument("--rounds", type=int, default=1, help="repeat every measurement; medians (default 1)")
    p.add_argument("--trainers", nargs="+", choices=("textinv", "reference"), default=["textinv", "reference"])
    p.add_argument("--reference", type=Path, default=os.environ.get("TEXTINV_REFERENCE_SCRIPT"))
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("TEXTINV_BENCH_CACHE", "/tmp/textinv-bench")))
    p.add_argument("--timeout", type=float, default=3600, help="seconds per trainer run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=ts.BENCH_DIR / "RESULTS.md")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to --results")
    args = p.parse_args(argv)
    if args.resolution is None:
        args.resolution = 32 if args.size == "tiny" else 256
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trainers = list(args.trainers)
    if "reference" in trainers and (args.reference is None or not Path(args.reference).is_file()):
        print(
            f"contention: skipping the reference: {args.reference or '$TEXTINV_REFERENCE_SCRIPT (unset)'} is not a "
            "file. Pass --reference PATH to diffusers' examples/textual_inversion/textual_inversion.py.",
            file=sys.stderr,
        )
        trainers.remove("reference")
    if args.reference:
        args.reference = Path(args.reference).resolve()
    args.cache = args.cache.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    model = ts.build_pipeline(args.size, args.cache / f"pipeline-{args.size}")
    data = ts.write_concept_images(args.cache / "concept")
    shim = [] if importlib.util.find_spec("torchvision") else ["--torchvision-shim", str(ts.SHIMS)]
    shutil.rmtree(args.cache / "contention", ignore_errors=True)
    load_before = ts.load_average()
    rounds, all_ok = [], True
    for index in range(args.rounds):
        order = [(t, c) for t in trainers for c in (False, True)]
        rows = [measure(args, t, c, model, data, shim) for t, c in (order[::-1] if index % 2 else order)]
        for r in rows:
            if r["error"]:
                all_ok = False
                print(f"contention: {r['trainer']} failed: {r['error']}", file=sys.stderr)
        rounds.append(rows)
    table = format_table(summarise(rounds), trainers, args.competitor)
    by_round = [
        f"- round {i + 1}: "
        + ", ".join(
            f"{r['trainer']} {'contended' if r['contended'] else 'alone'} "
            + ("failed" if r["s_step"] is None else f"{r['s_step']:.2f} s/step")
            + (f" (competitor got {r['competitor_cpu']:.0f} CPU s)" if r["competitor_cpu"] is not None else "")
            for r in rows
        )
        for i, rows in enumerate(rounds)
    ]
    table += "\n\n" + "\n".join(by_round)
    print(table)
    if not args.no_record:
        title = f"contention: {args.size}, cpu, {args.resolution} px, batch 1, fp32, competitor `{args.competitor}`"
        details = (
            f"Machine: {ts.machine_description('cpu')}. Load average before/after: {load_before} / "
            f"{ts.load_average()}. {args.steps} timed steps after {args.warmup} warm-up steps, "
            f"{args.rounds} round(s), medians."
        )
        ts.record(args.results, title, details, table, script="contention.py")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
