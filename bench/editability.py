"""Editability on every background (issue 23 §7): does a learned concept keep itself on any background?

For random concepts of the shapes world (seeded, so that they are held out from whatever the
settings were tuned on), each trained once on five images of one background, as a user's photos
share one: `textinv toy images CONCEPT -n 5 --background B` (which writes each image's caption beside
it, "on a B background", as a user captions what is not the concept; `--no-captions` trains on the
images alone), `textinv train` with nothing but the data, `--placeholder_token "<x>"`,
`--initializer_token SHAPE` and `--seed`, then for EVERY background of the world that the concept's
colour may be drawn on (world.allowed):

- "a <x> on a BACKGROUND background"    (learned)            concept match and background, target >= 70 % each
- "a SHAPE on a BACKGROUND background"  (initializer alone)  the same two rates, for comparison
- "a COLOUR SHAPE on a BACKGROUND background" (in words)    what the model draws when told: a cell the words
                                                             miss is one the model cannot draw

judged as `textinv toy score` does. Everything is seeded: the same command prints the same table.

Usage:
    python bench/editability.py --random 4 --seed 23          # 4 concepts drawn with seed 23
    python bench/editability.py --concept "purple ring" --train-background white
    python bench/editability.py --random 1 -n 2 --train-flags="--max_train_steps 2" --generate-flags="--steps 2"
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

from textinv.cpu_runtime import configure_cpu_runtime

configure_cpu_runtime()  # what the `textinv` command does first: libgomp reads it when torch loads

from textinv.cli import main as textinv  # noqa: E402
from textinv.toy import judge, world  # noqa: E402

TARGET = 0.7
ROWS = {  # the prompt rows of each concept: the learned token, the initializer word alone, the concept in words
    "learned": "a <x> on a B background",
    "initializer": "a SHAPE on a B background",
    "words": "a COLOUR SHAPE on a B background",
}


def run(*args: str) -> None:
    code = textinv(list(args))
    if code != 0:
        raise SystemExit(f"editability: `textinv {' '.join(args)}` exited {code}")


def draw_concepts(n: int, seed: int, exclude: set[str]) -> list[tuple[str, str]]:
    """`n` distinct (concept, training background) pairs, drawn from `seed`."""
    rng = random.Random(seed)
    picks: list[tuple[str, str]] = []
    while len(picks) < n:
        concept = f"{rng.choice(list(world.COLOURS))} {rng.choice(world.SHAPES)}"
        if concept in exclude or concept in (c for c, _ in picks):
            continue
        colour, _ = world.parse_concept(concept)
        picks.append((concept, rng.choice([b for b in world.BACKGROUNDS if world.allowed(colour, b)])))
    return picks


def edit_scores(concept: str, kind: str, emb: Path | None, work: Path, n: int, seed: int, flags: list[str]) -> dict:
    """{background: score} for "a WORD on a B background", WORD being the learned token (`kind` "learned"), the
    initializer word alone ("initializer") or the concept in words ("words": what the model draws when told)."""
    colour, shape = world.parse_concept(concept)
    word = {"learned": "<x>", "initializer": shape, "words": concept}[kind]
    extra = ["--concept", str(emb)] if kind == "learned" else []
    scores = {}
    for background in world.BACKGROUNDS:
        if colour is not None and not world.allowed(colour, background):
            continue  # the world never draws a shape on its own colour: nothing to judge
        out = work / f"{kind}-{background}"
        prompt = f"a {word} on a {background} background"
        run("generate", prompt, "-n", str(n), "--out", str(out), "--seed", str(seed), "--quiet", *extra, *flags)
        scores[background] = judge.score_folder(out, concept, background)
    return scores


def concept_rows(concept: str, trained_on: str, work: Path, args: argparse.Namespace, seed: int) -> dict:
    """Train `concept` once on five images of `trained_on`, then score both prompts on every background."""
    _, shape = world.parse_concept(concept)
    data, emb = work / "images", work / "embedding"
    captions = [] if args.captions else ["--no-captions"]
    run("toy", "images", concept, "-n", "5", "--background", trained_on, "--seed", str(seed), "--out", str(data),
        *captions)  # fmt: skip
    started = time.perf_counter()
    run("train", "--train_data_dir", str(data), "--placeholder_token", "<x>", "--initializer_token", shape,
        "--seed", str(seed), "--output_dir", str(emb), *shlex.split(args.train_flags))  # fmt: skip
    seconds = time.perf_counter() - started
    gen = shlex.split(args.generate_flags)
    return {
        "concept": concept,
        "trained_on": trained_on,
        "train_s": seconds,
        **{kind: edit_scores(concept, kind, emb, work, args.num_images, seed, gen) for kind in ROWS},
    }


def cell(score: dict | None) -> str:
    return "—" if score is None else f"{score['match']:.0%} / {score['background']:.0%}"


def print_table(rows: list[dict], command: str, n: int) -> None:
    print(f"\n`{command}`: {n} samples per prompt; cell = concept match / background match (judged)\n")
    print("| concept (trained on) | train s | prompt | " + " | ".join(world.BACKGROUNDS) + " |")
    print("| --- | ---: | --- |" + " ---: |" * len(world.BACKGROUNDS))
    for r in rows:
        for kind, label in ROWS.items():
            lead = f"{r['concept']} ({r['trained_on']}) | {r['train_s']:.0f}" if kind == "learned" else " | "
            cells = " | ".join(cell(r[kind].get(b)) for b in world.BACKGROUNDS)
            print(f"| {lead} | {label} | {cells} |")
    learned = [s for r in rows for s in r["learned"].values()]
    met = [s for s in learned if s["match"] >= TARGET and s["background"] >= TARGET]
    worst_match = min(s["match"] for s in learned)
    worst_bg = min(s["background"] for s in learned)
    ok = "ok" if len(met) == len(learned) else "MISSED"
    print(
        f"\nlearned cells meeting >= {TARGET:.0%} concept and background: {len(met)} of {len(learned)} "
        f"(worst concept match {worst_match:.0%}, worst background {worst_bg:.0%}; target: {ok})"
    )
    # Where the model cannot draw the concept even when told in words, no learned token is expected to.
    drawable = [(r["learned"][b], w) for r in rows for b, w in r["words"].items() if w["match"] >= TARGET]
    met_drawable = [s for s, _ in drawable if s["match"] >= TARGET and s["background"] >= TARGET]
    print(
        f"of the {len(drawable)} cells the words themselves draw (>= {TARGET:.0%}), the learned token meets the target "
        f"in {len(met_drawable)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", action="append", default=[], help="'COLOUR SHAPE' (repeatable)")
    parser.add_argument("--random", type=int, default=0, help="also this many concepts drawn at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws, the training and the sampling")
    parser.add_argument("--train-background", help="train every concept on this background (default: drawn)")
    parser.add_argument("--exclude", action="append", default=["orange star"], help="never draw this concept")
    parser.add_argument("-n", "--num-images", type=int, default=16, help="samples per prompt and background")
    parser.add_argument(
        "--no-captions", dest="captions", action="store_false", help="train on the images alone, without captions"
    )
    parser.add_argument("--train-flags", default="", help="extra `textinv train` flags")
    parser.add_argument("--generate-flags", default="", help="extra `textinv generate` flags")
    args = parser.parse_args()
    world.check_background(args.train_background)
    rng = random.Random(args.seed)
    picks = [(c, args.train_background) for c in args.concept]
    picks += draw_concepts(args.random, args.seed, set(args.exclude) | set(args.concept))
    if not picks:
        raise SystemExit("editability: name a --concept or ask for --random N")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (concept, trained_on) in enumerate(picks):
            colour, _ = world.parse_concept(concept)
            on = args.train_background or trained_on
            if on is None:
                on = rng.choice([b for b in world.BACKGROUNDS if world.allowed(colour, b)])
            if not world.allowed(colour, on):
                raise SystemExit(f"editability: {concept} cannot be drawn on {on}; pick another --train-background")
            rows.append(concept_rows(concept, on, Path(tmp) / f"c{i}", args, args.seed + i))
    print_table(rows, shlex.join(["python", "bench/editability.py", *sys.argv[1:]]), args.num_images)


if __name__ == "__main__":
    main()
