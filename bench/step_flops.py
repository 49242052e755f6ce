"""The floor under a CPU training step: its floating-point work against the fastest fp32 product this CPU runs.

Counts one textinv training step (the text encoder(s) and the UNet forward, their input-gradient backward; the
VAE does not run, its posteriors are cached) with `torch.utils.flop_counter` on the bench's random SD-1.5- or
SDXL 1.0-sized pipeline (`train_speed.py`, `sdxl_speed.py` build and cache them), adds attention (the counter does
not see PyTorch's CPU flash-attention kernel), times the fastest fp32 matrix product this machine runs (square
products on BLAS and on oneDNN, best of several), and prints how long the step would take if every kernel ran at
that rate. A trainer that does the method's work cannot step faster; `--target-seconds` (half the reference's
s/step, for a 2x target) reads as the share of that rate every kernel would need.

    python bench/step_flops.py --family sdxl --target-seconds 7.67
    python bench/step_flops.py --family sd15 --target-seconds 3.1
    python bench/step_flops.py --family sd15 --size tiny --no-record     # seconds: checks the bench itself
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import train_speed as ts

FAMILIES = ("sd15", "sdxl")
GROUPS = {
    "mm": "matrix products",
    "addmm": "matrix products",
    "bmm": "matrix products",
    "baddbmm": "matrix products",
    "convolution": "convolutions",
    "convolution_backward": "convolutions",
}


def _flash_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def attention_mapping() -> dict:
    """FLOP formulas for PyTorch's CPU flash attention, forward and backward (the same as its GPU kernels')."""
    import torch

    ops = torch.ops.aten
    return {
        ops._scaled_dot_product_flash_attention_for_cpu: _flash_forward,
        ops._scaled_dot_product_flash_attention_for_cpu_backward: _flash_backward,
    }


def load_pipeline(family: str, size: str, cache: Path):
    import torch
    from diffusers import DiffusionPipeline

    if family == "sdxl":
        import sdxl_speed

        folder = sdxl_speed.build_sdxl_pipeline(size, cache / f"pipeline-{size}-xl")
    else:
        folder = ts.build_pipeline(size, cache / f"pipeline-{size}")
    return DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)


def step_flops(pipe, resolution: int) -> Counter:
    """FLOPs of one training step at batch 1, by kind of work ("matrix products", "convolutions", "attention")."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from textinv.families import adapter_for

    pipe.unet.requires_grad_(False)
    family = adapter_for(pipe)
    family.add_placeholder("<flops>", 1, "toy")
    family.set_images([(resolution, resolution)], resolution, center_crop=True)
    ids = family.tokenize(["a photo of a <flops>"])
    gen = torch.Generator().manual_seed(0)
    side = resolution // 8
    latents = torch.randn(1, pipe.unet.config.in_channels, side, side, generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    with FlopCounterMode(display=False, custom_mapping=attention_mapping()) as counter:
        cond = family.condition(ids, torch.tensor([0]), torch.float32)
        pred = pipe.unet(latents, torch.tensor([500]), cond.hidden_states, **cond.unet_kwargs).sample
        F.mse_loss(pred, noise).backward()
    assert family.rows[0].grad is not None  # the step reached the new rows
    kinds = Counter()
    for op, flops in counter.get_flop_counts()["Global"].items():
        name = str(op).split(".")[-1]
        kinds[GROUPS.get(name, "attention" if "attention" in name else "other")] += flops
    return kinds


def fastest_product(sizes=(1024, 2048, 3072), repeats: int = 5) -> tuple[float, str]:
    """The best fp32 GFLOP/s of square products on this CPU, and which (BLAS or oneDNN, n) reached it."""
    import torch

    from textinv.cpu_kernels import _onednn_gemm, onednn_linear_available

    best, where = 0.0, ""
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        runs = {"BLAS": lambda a=a, b=b: torch.mm(a, b)}
        if onednn_linear_available():
            runs["oneDNN"] = lambda a=a, b=b: _onednn_gemm(a, b, None)
        for name, run in runs.items():
            run()  # first call: kernel generation, the allocator growing
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                rate = 2 * n**3 / (time.perf_counter() - start) / 1e9
                if rate > best:
                    best, where = rate, f"{name}, {n}x{n}"
    return best, where


def format_table(kinds: Counter, rate: float, where: str, target: float | None) -> str:
    total = sum(kinds.values())
    lines = ["| work in one step (forward + input gradient) | GFLOP | share |", "| --- | ---: | ---: |"]
    for kind in ("matrix products", "convolutions", "attention", "other"):
        if kinds[kind]:
            lines.append(f"| {kind} | {kinds[kind] / 1e9:.1f} | {kinds[kind] / total:.0%} |")
    floor = total / 1e9 / rate
    lines += [
        f"| total | {total / 1e9:.1f} | 100% |",
        "",
        f"Fastest fp32 product on this CPU: {rate:.1f} GFLOP/s ({where}). "
        f"The step at that rate throughout: **{floor:.2f} s**.",
    ]
    if target:
        lines.append(
            f"A step of {target:.2f} s needs every kernel at {floor / target:.0%} of that rate on average "
            f"({total / 1e9 / target:.1f} GFLOP/s)."
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=FAMILIES, default="sdxl")
    p.add_argument("--size", choices=("full", "tiny"), default="full", help="full: SD-1.5 / SDXL 1.0 sized")
    p.add_argument("--resolution", type=int, help="default: 256, 32 for --size tiny")
    p.add_argument("--target-seconds", type=float, help="a step time to compare with (half the reference's: 2x)")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("TEXTINV_BENCH_CACHE", "/tmp/textinv-bench")),
        help="where the benches cache their models ($TEXTINV_BENCH_CACHE, default /tmp/textinv-bench)",
    )
    p.add_argument("--results", type=Path, default=ts.BENCH_DIR / "RESULTS.md", help="append the table here")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to --results")
    args = p.parse_args(argv)
    args.resolution = args.resolution or (32 if args.size == "tiny" else 256)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = {"full": args.family, "tiny": "tiny"}[args.size]
    print(f"step_flops: loading the {size} {args.family} pipeline under {args.cache}", file=sys.stderr)
    kinds = step_flops(load_pipeline(args.family, size, args.cache.resolve()), args.resolution)
    rate, where = fastest_product()
    table = format_table(kinds, rate, where, args.target_seconds)
    print(table)
    if not args.no_record:
        title = f"step_flops: {args.family} ({args.size}), cpu, {args.resolution} px, batch 1, fp32"
        details = f"Machine: {ts.machine_description('cpu')}. Load average after: {ts.load_average()}."
        ts.record(args.results, title, details, table, "step_flops.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
