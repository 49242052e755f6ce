"""The toy model's fidelity targets (issue 3), measured the way a user would: real CLI commands only.

For each object concept: `textinv toy images CONCEPT -n 5` (images and their captions, each naming
the image's background, as a user captions what is not the concept; the bundled examples have no
captions), then `textinv train` with nothing but
`--train_data_dir`, `--placeholder_token`, `--initializer_token SHAPE` (and an output folder), then
`textinv generate` at its defaults, 32 samples per prompt, judged by `textinv toy score`'s judge:

- "a photo of a <x>"            shape+colour match          target >= 80 %
- "a photo of a SHAPE"          (initializer word alone)    target <= 40 %
- "a <x> on a blue background"  shape+colour and blue       target >= 70 % each

and for the bundled style (examples/checkered-style, `--learnable_property style`), or for fresh
style sets of other backgrounds (`textinv toy images BACKGROUND -n 5`, with `--style NAME`):
- "a circle in the style of <s>" shows that background            target >= 70 %

Usage:
    python bench/toy_targets.py                              # the bundled orange star + the style
    python bench/toy_targets.py --random 3 --seed 7          # 3 concepts picked at random from the world
    python bench/toy_targets.py --concept "green heart" --no-style
    python bench/toy_targets.py --no-bundled --style striped --style black   # styles only
    python bench/toy_targets.py --train-flags="--fp8_base"  # a lever's effect on fidelity (not the defaults)
    python bench/toy_targets.py --generate-flags="--guidance 2"  # a sampling setting's effect (not the defaults)
    python bench/toy_targets.py --family sdxl --no-bundled --random 3 --seed 7 --no-style   # the SDXL twin

`--family sdxl` measures the SDXL-architecture twin the same way: every `textinv train` gets
`--pretrained_model_name_or_path DIR` and every `textinv generate` `--model DIR`, DIR being what
`textinv toy path --family sdxl` prints (the SD 1 model is the CLI's default, so its commands name none).
"""

from __future__ import annotations

import argparse
import random
import shlex
import tempfile
import time
from pathlib import Path

from textinv.cpu_runtime import configure_cpu_runtime

configure_cpu_runtime()  # what the `textinv` command does first: libgomp reads it when torch loads

from textinv.cli import main as textinv  # noqa: E402
from textinv.models import TOY_MODEL_DIRS, toy_model_dir  # noqa: E402
from textinv.toy import judge, world  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ORANGE_STAR = REPO / "examples" / "orange-star"
CHECKERED = REPO / "examples" / "checkered-style"


def run(*args: str) -> None:
    code = textinv(list(args))
    if code != 0:
        raise SystemExit(f"toy_targets: `textinv {' '.join(args)}` exited {code}")


# The model flags of `textinv train` and `textinv generate` (empty for the SD 1 toy, the CLI's default model),
# and any `--generate-flags`.
MODEL_FLAGS: dict[str, list[str]] = {"train": [], "generate": []}


def use_family(family: str) -> None:
    if family != "sd1":
        folder = str(toy_model_dir(family))
        MODEL_FLAGS.update(train=["--pretrained_model_name_or_path", folder], generate=["--model", folder])


def generate(prompt: str, out: Path, n: int, concept: Path | None = None) -> Path:
    extra = ["--concept", str(concept)] if concept else []
    run("generate", prompt, "-n", str(n), "--out", str(out), "--quiet", *MODEL_FLAGS["generate"], *extra)
    return out


def object_row(concept: str, data: Path | None, work: Path, n: int, train_flags: list[str]) -> dict:
    """Train on `data` (or a fresh `textinv toy images` set) and score the three prompts."""
    colour, shape = world.parse_concept(concept)
    if data is None:
        data = work / "images"
        run("toy", "images", concept, "-n", "5", "--out", str(data))
    emb = work / "embedding"
    started = time.perf_counter()
    run("train", "--train_data_dir", str(data), "--placeholder_token", "<x>", "--initializer_token", shape,
        "--output_dir", str(emb), *MODEL_FLAGS["train"], *train_flags)  # fmt: skip
    seconds = time.perf_counter() - started
    learned = judge.score_folder(generate("a photo of a <x>", work / "learned", n, emb), concept)
    initializer = judge.score_folder(generate(f"a photo of a {shape}", work / "initializer", n), concept)
    blue = None  # a blue shape on a blue background is invisible: no editability check for blue concepts
    if colour != "blue":
        blue = judge.score_folder(generate("a <x> on a blue background", work / "blue", n, emb), concept, "blue")
    return {"concept": concept, "train_s": seconds, "learned": learned, "initializer": initializer, "blue": blue}


def style_row(background: str, data: Path | None, work: Path, n: int, train_flags: list[str]) -> dict:
    """Train a style on `data` (or a fresh `textinv toy images BACKGROUND` set) and score one prompt."""
    if data is None:
        data = work / "images"
        run("toy", "images", background, "-n", "5", "--out", str(data))
    emb = work / "embedding"
    started = time.perf_counter()
    run("train", "--train_data_dir", str(data), "--placeholder_token", "<s>", "--initializer_token", "pattern",
        "--learnable_property", "style", "--output_dir", str(emb), *MODEL_FLAGS["train"], *train_flags)  # fmt: skip
    seconds = time.perf_counter() - started
    score = judge.score_folder(generate("a circle in the style of <s>", work / "style", n, emb), "circle", background)
    return {"background": background, "bundled": data == CHECKERED, "train_s": seconds, "score": score}


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", action="append", help="'COLOUR SHAPE' (repeatable); default: the bundled one")
    parser.add_argument("--random", type=int, default=0, help="also this many concepts picked at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random picks")
    parser.add_argument("-n", "--num-images", type=int, default=32)
    parser.add_argument("--style", action="append", default=[], help="also a fresh style set of this background")
    parser.add_argument("--no-style", action="store_true", help="skip the bundled style concept")
    parser.add_argument("--no-bundled", action="store_true", help="skip the bundled object (when none is named)")
    parser.add_argument("--train-flags", default="", help="extra `textinv train` flags, e.g. '--fp8_base'")
    parser.add_argument("--generate-flags", default="", help="extra `textinv generate` flags, e.g. '--guidance 2'")
    parser.add_argument("--family", default="sd1", choices=tuple(TOY_MODEL_DIRS), help="which toy model (default sd1)")
    args = parser.parse_args()
    use_family(args.family)
    MODEL_FLAGS["generate"] += shlex.split(args.generate_flags)
    train_flags = shlex.split(args.train_flags)  # appended to every `textinv train`
    picks = random.Random(args.seed)
    concepts: list[tuple[str, Path | None]] = [(c, None) for c in args.concept or []]
    for _ in range(args.random):
        concepts.append((f"{picks.choice(list(world.COLOURS))} {picks.choice(world.SHAPES)}", None))
    if not concepts and not args.no_bundled:
        concepts = [("orange star", ORANGE_STAR)]
    styles: list[tuple[str, Path | None]] = [] if args.no_style else [("checkered", CHECKERED)]
    styles += [(name, None) for name in args.style]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (concept, data) in enumerate(concepts):
            rows.append(object_row(concept, data, Path(tmp) / f"c{i}", args.num_images, train_flags))
        style_rows = [
            style_row(b, d, Path(tmp) / f"s{i}", args.num_images, train_flags) for i, (b, d) in enumerate(styles)
        ]
    n = args.num_images
    flags = f" + `{args.train_flags}`" if args.train_flags else ""
    generate_flags = f" + `{args.generate_flags}`" if args.generate_flags else ""
    model = "the toy model"
    if args.family != "sd1":
        model = f"the {args.family} toy model (`textinv toy path --family {args.family}`)"
    print(f"\n{n} samples per prompt; `textinv train`{flags} and `textinv generate`{generate_flags} at their defaults "
          f"on {model}")  # fmt: skip
    print()
    print("| concept | train s | learned match | initializer match | blue: match | blue: background | targets |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        blue = r["blue"]
        ok = r["learned"]["match"] >= 0.8 and r["initializer"]["match"] <= 0.4
        ok = ok and (blue is None or (blue["match"] >= 0.7 and blue["background"] >= 0.7))
        edit = "n/a | n/a" if blue is None else f"{blue['match']:.0%} | {blue['background']:.0%}"
        print(
            f"| {r['concept']} | {r['train_s']:.0f} | {r['learned']['match']:.0%} | {r['initializer']['match']:.0%} "
            f"| {edit} | {mark(ok)} |"
        )
    for style in style_rows:
        got, where = style["score"]["background"], "examples/checkered-style" if style["bundled"] else "fresh set"
        print(f"\nstyle {style['background']} ({where}): 'a circle in the style of <s>' shows it in {got:.0%} "
              f"(target 70 %: {mark(got >= 0.7)}), shape circle in {style['score']['shape']:.0%}; "
              f"train {style['train_s']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
