"""The JAX backend's own CPU attention and upsampling, against jax's, at every size the UNet step runs them.

For each distinct attention call of one UNet forward (heads, queries, keys, head width): `jax.nn.dot_product_attention`
against `attention.blockwise_attention`; for each upsampler (`Upsample2D`: 2x nearest, then a 3x3 convolution): the
2x map convolved (as `layers.Conv` does it) against `layers.upsampled_conv`'s phase products on the small map. Each
forward + input gradient, the two ways' calls alternating (this VM drifts; medians), with how often the UNet runs
it, which way the backend's rule takes, and the step's total each way. The rules are fixed properties of shapes, so
a compiled step is the same program whatever the load.

    python bench/jax_ops.py                      # SD-1.5's UNet at 256 px, batch 1 (the issue-21 CPU bench)
    python bench/jax_ops.py --resolution 512
    python bench/jax_ops.py --size tiny --repeats 1 --no-record    # seconds: checks the bench itself
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import jax_conv
import train_speed as ts


def unet_calls(size: str, resolution: int, batch: int) -> Counter:
    """The attention and upsampler calls of one UNet forward (shape → count), traced abstractly: no weights made.

    Keys: ("attention", batch, heads, queries, keys, head width) and ("upsampler", batch, height, width, channels).
    """
    from textinv.backends.jax import layers
    from textinv.backends.jax import unet as unet_module

    seen: Counter = Counter()
    attention, sampler = layers.multi_head_attention, unet_module.Sampler.__call__

    def record_attention(q, k, v, heads, causal=False):
        seen[("attention", q.shape[0], heads, q.shape[1], k.shape[1], q.shape[2] // heads)] += 1
        return attention(q, k, v, heads, causal)

    def record_sampler(self, x, size=None):
        if not self.down:
            seen[("upsampler", *x.shape)] += 1
        return sampler(self, x, size)

    layers.multi_head_attention, unet_module.Sampler.__call__ = record_attention, record_sampler
    try:
        jax_conv.trace_unet(size, resolution, batch)
    finally:
        layers.multi_head_attention, unet_module.Sampler.__call__ = attention, sampler
    return seen


def _ways(call: tuple):
    """(jax's way, the backend's own way, whether the backend's rule takes its own, inputs, how many of them get a
    gradient). The frozen kernel is an input, as in the training step, so that XLA cannot fold it."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from textinv.backends.jax import attention, layers
    from textinv.backends.jax.unet import _upsample_nearest

    g = np.random.default_rng(0)
    if call[0] == "attention":
        _, b, heads, queries, keys, width = call
        q = jnp.asarray(g.standard_normal((b, heads, queries, width)), jnp.float32)
        k, v = (jnp.asarray(g.standard_normal((b, heads, keys, width)), jnp.float32) for _ in range(2))
        t = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  jax's [B, T, H, D]
        theirs = lambda q, k, v: t(jax.nn.dot_product_attention(t(q), t(k), t(v)))  # noqa: E731
        block = attention.query_block(heads, queries, keys)
        ours = lambda q, k, v: attention.blockwise_attention(q, k, v, block)  # noqa: E731
        return theirs, ours, attention.runs_here("cpu"), (q, k, v), 3
    _, b, h, w, c = call
    graphdef, weights = nnx.split(layers.conv(c, c, 3, nnx.Rngs(0)))
    x = jnp.asarray(g.standard_normal((b, h, w, c)), jnp.float32)

    def theirs(x, weights):  # `Sampler` without the rule: the 2x map, convolved as `layers.Conv` does it
        return nnx.merge(graphdef, weights)(_upsample_nearest(x, (2 * h, 2 * w)))

    def ours(x, weights):
        conv = nnx.merge(graphdef, weights)
        return layers.upsampled_conv(x, conv.kernel[...], conv.bias[...])

    return theirs, ours, layers.upsampled_conv_wins(b * h * w, "cpu"), (x, weights), 1


def time_both(call: tuple, repeats: int) -> tuple[float, float, bool]:
    """Median seconds of forward + input gradient, jax's way then the backend's own, calls alternating."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    theirs, ours, rule, inputs, differentiated = _ways(call)
    argnums = tuple(range(differentiated))
    steps = [
        jax.jit(jax.value_and_grad(lambda *a, way=way: jnp.sum(jnp.square(way(*a))), argnums=argnums))
        for way in (theirs, ours)
    ]
    for step in steps:
        jax.block_until_ready(step(*inputs))
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            start = time.perf_counter()
            jax.block_until_ready(step(*inputs))
            times[i].append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1])), rule


def describe(call: tuple) -> str:
    if call[0] == "attention":
        _, b, heads, queries, keys, width = call
        return f"attention: {b}×{heads} heads, {queries} queries × {keys} keys, width {width}"
    _, b, h, w, c = call
    return f"upsampler: {b}×{h}×{w}×{c} → {2 * h}×{2 * w}"


def format_table(rows: list[tuple[tuple, int, float, float, bool]]) -> str:
    lines = [
        "| op (forward + input gradient) | runs per step | jax's ms | textinv's ms | textinv / jax | rule |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    totals = {"jax": 0.0, "ours": 0.0, "rule": 0.0}
    for call, count, theirs, ours, rule in rows:
        lines.append(
            f"| {describe(call)} | {count} | {theirs * 1e3:.2f} | {ours * 1e3:.2f} | {ours / theirs:.2f} | "
            f"{'textinv' if rule else 'jax'} |"
        )
        totals["jax"] += count * theirs
        totals["ours"] += count * ours
        totals["rule"] += count * (ours if rule else theirs)
    lines.append(
        f"| **all of a step** | {sum(r[1] for r in rows)} | {totals['jax'] * 1e3:.0f} | {totals['ours'] * 1e3:.0f} "
        f"| | rule: {totals['rule'] * 1e3:.0f} ms |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = jax_conv.unet_bench_arguments(__doc__)
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per way, alternating; the median counts")
    args = parser.parse_args(argv)
    resolution = args.resolution or (32 if args.size == "tiny" else 256)

    import jax

    from textinv.backends.jax.backend import set_matmul_precision

    set_matmul_precision(False)
    rows = []
    calls = unet_calls(args.size, resolution, args.batch)
    for call, count in sorted(calls.items(), key=lambda item: (item[0][0], -item[0][3])):
        theirs, ours, rule = time_both(call, args.repeats)
        rows.append((call, count, theirs, ours, rule))
        print(f"{describe(call)}: jax {theirs * 1e3:.2f} ms, textinv {ours * 1e3:.2f} ms", file=sys.stderr, flush=True)
    table = format_table(rows)
    print(table)
    if not args.no_record:
        title = f"jax_ops: {args.size} UNet, {resolution} px, batch {args.batch}, fp32, forward + input gradient"
        details = (
            f"Machine: {ts.machine_description('cpu')}, jax {jax.__version__}. Medians of {args.repeats} runs, "
            "the two ways alternating.\n"
        )
        ts.record(args.results, title, details, table, script="jax_ops.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
