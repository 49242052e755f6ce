"""Every convolution of the JAX backend's UNet step, timed both ways on this machine: XLA's own convolution and one
matrix product over image patches (`backends/jax/layers.Conv`), forward + input gradient, as the training step runs
them. Prints a table per distinct convolution (with how often the UNet runs it), which way the backend's rule picks,
and the step's convolution total under XLA only, patches only, and the rule.

The rule (`layers.patches_product_wins`) is a fixed property of shapes, so the compiled step is the same program
whatever the load: measured, not tuned at run time.

    python bench/jax_conv.py                     # SD-1.5's UNet at 256 px, batch 1 (the issue-21 CPU bench)
    python bench/jax_conv.py --resolution 512 --batch 2
    python bench/jax_conv.py --size tiny --repeats 1 --no-record    # seconds: checks the bench itself
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import train_speed as ts

Shape = tuple  # (batch, height, width, in channels, out channels, kernel, stride)


def trace_unet(size: str, resolution: int, batch: int) -> None:
    """One forward of the bench's UNet traced abstractly (no weights are made): hooks installed on the backend's
    layers around it see every call with its shapes (here the convolutions; `jax_ops.py` the attention calls and
    upsamplers)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from textinv.backends.jax.unet import UNet, UNetConfig

    cfg = UNetConfig.from_dict(ts.sd15_configs(size)["unet"])
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(cfg, nnx.Rngs(0))))
    latent = resolution // 8
    jax.eval_shape(
        lambda state: nnx.merge(graphdef, state)(
            jnp.zeros((batch, cfg.in_channels, latent, latent)),
            jnp.zeros((batch,), jnp.int32),
            jnp.zeros((batch, 77, cfg.cross_attention_dim[0])),
        ),
        state,
    )


def unet_convolutions(size: str, resolution: int, batch: int) -> Counter:
    """The convolutions one UNet forward runs (shape → count), traced abstractly: no weights are made."""
    from textinv.backends.jax import layers

    seen: Counter = Counter()
    original = layers.Conv.__call__

    def record(self, x):
        stride = self.strides if isinstance(self.strides, int) else self.strides[0]
        seen[(*x.shape, self.out_features, self.kernel_size[0], stride)] += 1
        return original(self, x)

    layers.Conv.__call__ = record
    try:
        trace_unet(size, resolution, batch)
    finally:
        layers.Conv.__call__ = original
    return seen


def time_both(shape: Shape, repeats: int) -> tuple[float, float, bool]:
    """Seconds (best of `repeats`) of forward + input gradient: XLA's convolution, then the patches product; and
    whether the backend's rule takes the patches product for this shape."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from textinv.backends.jax import layers

    batch, height, width, din, dout, kernel, stride = shape
    layer = layers.conv(din, dout, kernel, nnx.Rngs(0), stride=stride)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, height, width, din)), jnp.float32)
    ways = {
        "xla": lambda x: nnx.Conv.__call__(layer, x),
        "patches": lambda x: layers.Conv.patches_product(layer, x),
    }
    times = []
    for way in ways.values():
        step = jax.jit(jax.value_and_grad(lambda x, way=way: jnp.sum(jnp.square(way(x)))))
        jax.block_until_ready(step(x))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(step(x))
            best = min(best, time.perf_counter() - start)
        times.append(best)
    return times[0], times[1], layer.takes_patches_product(x)


def format_table(rows: list[tuple[Shape, int, float, float, bool]]) -> str:
    lines = [
        "| input (B×H×W×C) | out | kernel/stride | runs per step | XLA conv ms | patches ms | patches / XLA | rule |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    totals = {"xla": 0.0, "patches": 0.0, "rule": 0.0}
    for (b, h, w, din, dout, k, s), count, xla, patches, rule in rows:
        lines.append(
            f"| {b}×{h}×{w}×{din} | {dout} | {k}×{k}/{s} | {count} | {xla * 1e3:.1f} | {patches * 1e3:.1f} | "
            f"{patches / xla:.2f} | {'patches' if rule else 'xla'} |"
        )
        totals["xla"] += count * xla
        totals["patches"] += count * patches
        totals["rule"] += count * (patches if rule else xla)
    lines.append(
        f"| **all convolutions of a step** | | | {sum(r[1] for r in rows)} | {totals['xla'] * 1e3:.0f} | "
        f"{totals['patches'] * 1e3:.0f} | | rule: {totals['rule'] * 1e3:.0f} ms |"
    )
    return "\n".join(lines)


def unet_bench_arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments this bench and `jax_ops.py` share: which UNet, at what size, and where the table goes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--size", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 256, 32 for --size tiny)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to --results")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = unet_bench_arguments(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per way; the best counts")
    args = parser.parse_args(argv)
    resolution = args.resolution or (32 if args.size == "tiny" else 256)

    import jax

    from textinv.backends.jax.backend import set_matmul_precision

    set_matmul_precision(False)
    rows = []
    for shape, count in sorted(unet_convolutions(args.size, resolution, args.batch).items(), key=lambda i: -i[0][1]):
        xla, patches, rule = time_both(shape, args.repeats)
        rows.append((shape, count, xla, patches, rule))
        print(f"{shape}: xla {xla * 1e3:.1f} ms, patches {patches * 1e3:.1f} ms", file=sys.stderr, flush=True)
    table = format_table(rows)
    print(table)
    if not args.no_record:
        title = f"jax_conv: {args.size} UNet, {resolution} px, batch {args.batch}, fp32, forward + input gradient"
        details = f"Machine: {ts.machine_description('cpu')}, jax {jax.__version__}. Best of {args.repeats} runs.\n"
        ts.record(args.results, title, details, table, script="jax_conv.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
