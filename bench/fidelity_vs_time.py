"""Concept fidelity against training time on the embedded toy model: a table, one row per step budget.

Why: loss alone does not say whether a trainer change learns concepts better or faster; the judge does.
For each `--steps` budget, learn a concept of the shapes world with `textinv train` (the toy model's
recommended settings otherwise), sample "a photo of a <concept>" at the generate defaults and score it.
Usage: python bench/fidelity_vs_time.py [--concept "orange star"] [--steps 50 100 200 300] [-n 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from textinv.cpu_runtime import configure_cpu_runtime

configure_cpu_runtime()  # what the `textinv` command does first: libgomp reads it when torch loads

import torch  # noqa: E402

from textinv.concepts import load_concept  # noqa: E402
from textinv.toy import judge, world  # noqa: E402
from textinv.toy.demo import BASELINE_PROMPT, PLACEHOLDER, learn, sample, toy_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="orange star")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200, 300])
    parser.add_argument("-n", "--num-images", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, shape = world.parse_concept(args.concept)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "concept"
        world.write_concept_images(args.concept, data, 5, seed=args.seed + 1)
        pipe = toy_pipeline()
        base = judge.score(sample(pipe, BASELINE_PROMPT.format(shape), args.num_images, args.seed), args.concept)
        rows.append(("0 (initializer)", 0.0, base))
        for steps in args.steps:
            started = time.perf_counter()
            result = learn(data, shape, Path(tmp) / f"run{steps}", seed=args.seed, max_train_steps=steps)
            seconds = time.perf_counter() - started
            pipe = toy_pipeline()
            load_concept(pipe, result.embedding_path, PLACEHOLDER)
            images = sample(pipe, BASELINE_PROMPT.format(PLACEHOLDER), args.num_images, args.seed)
            rows.append((str(steps), seconds, judge.score(images, args.concept)))
    print(f"concept: {args.concept}, {args.num_images} samples per row, {args.threads} threads")
    print(f"{'steps':>16} | {'train s':>7} | {'match':>5} | {'shape':>5} | {'colour':>6}")
    print(f"{'-' * 16}-+-{'-' * 7}-+-{'-' * 5}-+-{'-' * 5}-+-{'-' * 6}")
    for steps, seconds, s in rows:
        print(f"{steps:>16} | {seconds:7.1f} | {s['match']:5.0%} | {s['shape']:5.0%} | {s['colour']:6.0%}")


if __name__ == "__main__":
    main()
