"""Measure each candidate speed lever on textinv's own training step, and check it learns the same.

Every lever runs in a fresh process (so peak memory is its own) over the same pipeline as
`train_speed.py`, the same sample draws (textinv's counter-based `SampleStream`, fixed seed) and the
same step as `textinv train` (`train._diffusion_loss`, backward, AdamW over the new rows). The table
gives s/step over the timed steps, the speed-up against the baseline (what train.py does with
`speed.apply_speedups` a no-op), peak RSS, and the largest loss and embedding differences against the
baseline: a lever that changes what is learned beyond float tolerance is not kept.

    python bench/levers.py --size sd15 --levers baseline channels_last
    python bench/levers.py --size sd15 --levers baseline compile --warmup 2   # compile time is reported
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

LEVERS = ("baseline", "channels_last", "compile", "compile_channels_last", "speedups")


def apply_lever(name: str, unet, text_encoder) -> None:
    """Apply one candidate lever to the frozen models (in place, or by wrapping `unet.forward`)."""
    import torch

    if name == "speedups":  # whatever textinv.speed keeps today
        from textinv.speed import apply_speedups

        apply_speedups(unet)
    if name in ("channels_last", "compile_channels_last"):
        unet.to(memory_format=torch.channels_last)
    if name in ("compile", "compile_channels_last"):
        unet.forward = torch.compile(unet.forward)


def run_one(lever: str, model: Path, data: Path, resolution: int, warmup: int, steps: int, seed: int) -> dict:
    """Train `warmup + steps` steps with one lever in this process; return timings, losses and rows."""
    import resource

    import torch
    from diffusers import DDPMScheduler

    from textinv.data import (
        SampleStream,
        cache_latent_posteriors,
        load_concept_images,
        templates_for,
        tokenize_templates,
    )
    from textinv.models import ModelSource, load_pipeline
    from textinv.tokens import add_placeholder_tokens, initializer_id, install_placeholder_embedding
    from textinv.train import _diffusion_loss

    device, dtype = torch.device("cpu"), torch.float32
    pipe = load_pipeline(ModelSource(str(model), "folder"), torch_dtype=dtype)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    placeholder = add_placeholder_tokens(tokenizer, "<bench-concept>", 1)
    new_rows = install_placeholder_embedding(text_encoder, tokenizer, placeholder, initializer_id(tokenizer, "toy"))
    images, _ = load_concept_images(data)
    posteriors = cache_latent_posteriors(vae, images, resolution, True, device, dtype)
    pipe.vae = vae = None
    apply_lever(lever, unet, text_encoder)
    template_ids = tokenize_templates(tokenizer, templates_for("object"), placeholder.prompt_string)
    stream = SampleStream(seed, len(images), 100, len(template_ids), posteriors.latent_shape, 1000)
    optimizer = torch.optim.AdamW([new_rows.rows], lr=5e-4)
    times, losses = [time.perf_counter()], []
    for step in range(warmup + steps):
        draws = stream.draw(range(step, step + 1))
        loss = _diffusion_loss(draws, posteriors, template_ids, text_encoder, unet, noise_scheduler, device, dtype)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        times.append(time.perf_counter())
    timed = times[warmup + 1 :]
    return {
        "lever": lever,
        "first_step_s": times[1] - times[0],
        "s_step": (timed[-1] - times[warmup]) / steps,
        "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "losses": losses,
        "rows": new_rows.rows.detach().flatten().tolist(),
    }


def compare(results: list[dict]) -> list[dict]:
    """Rows of the table: each lever against the first (the baseline)."""
    base = results[0]
    rows = []
    for r in results:
        if "error" in r:
            rows.append({"lever": r["lever"], "error": r["error"]})
            continue
        dloss = max(abs(a - b) for a, b in zip(r["losses"], base["losses"], strict=True))
        drow = max(abs(a - b) for a, b in zip(r["rows"], base["rows"], strict=True))
        rows.append(
            {
                "lever": r["lever"],
                "s_step": r["s_step"],
                "speedup": base["s_step"] / r["s_step"],
                "first_step_s": r["first_step_s"],
                "maxrss_gb": r["maxrss_gb"],
                "max_dloss": dloss,
                "max_drow": drow,
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| lever | s/step | speed-up | first step s | peak RSS GB | max Δloss | max Δembedding |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['lever']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['lever']} | {r['s_step']:.3f} | {r['speedup']:.2f}× | {r['first_step_s']:.1f} | "
            f"{r['maxrss_gb']:.2f} | {r['max_dloss']:.1e} | {r['max_drow']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import train_speed

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("sd15", "tiny"), default="sd15")
    p.add_argument("--resolution", type=int, help="default: 256, or 32 for --size tiny")
    p.add_argument("--levers", nargs="+", choices=LEVERS, default=["baseline", "channels_last"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("TEXTINV_BENCH_CACHE", "/tmp/textinv-bench")))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this lever here, print JSON
    args = p.parse_args(argv)
    resolution = args.resolution or (32 if args.size == "tiny" else 256)
    model = train_speed.build_pipeline(args.size, args.cache / f"pipeline-{args.size}")
    data = train_speed.write_concept_images(args.cache / "concept")
    if args.one:
        print(json.dumps(run_one(args.one, model, data, resolution, args.warmup, args.steps, args.seed)))
        return 0
    if args.levers[0] != "baseline":
        args.levers.insert(0, "baseline")
    results = []
    for lever in args.levers:
        print(f"levers: {lever} ...", file=sys.stderr)
        cmd = [sys.executable, __file__, "--one", lever, *(argv if argv is not None else sys.argv[1:])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            results.append({"lever": lever, "error": f"exit {proc.returncode}"})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(
        f"{args.size}, {resolution} px, batch 1, fp32, {args.steps} timed steps after {args.warmup}; "
        f"load average {train_speed.load_average()}"
    )
    print(format_table(compare(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
