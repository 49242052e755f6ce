"""`textinv toy ...`: the shapes world (list, images), the judge (score) and the toy model's recipe (build)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("textinv")


def register(subparsers) -> None:
    from textinv.models import TOY_MODEL_DIRS

    parser = subparsers.add_parser(
        "toy",
        help="the shapes world, its judge and the embedded toy model",
        description="The shapes world that the embedded toy model was trained on: list it, draw any "
        "concept of it, score generated images with the judge, or rebuild the model.",
    )
    sub = parser.add_subparsers(dest="toy_command", metavar="TOY_COMMAND", required=True)

    p = sub.add_parser("list", help="the shapes, colours and backgrounds of the world")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_list)

    p = sub.add_parser("images", help="write a training set of one concept, e.g. 'green heart' or 'striped'")
    p.add_argument("concept", help="'COLOUR SHAPE' (an object) or a background name (a style)")
    p.add_argument("-n", "--num", type=int, default=5, help="number of images (default 5)")
    p.add_argument("--out", required=True, type=Path, help="folder to write img_00.png ... into")
    p.add_argument("--background", default=None, help="fix the background (default: varied)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-captions",
        dest="captions",
        action="store_false",
        help="write images only (default: a caption beside each, img_00.txt, naming what is not the concept: "
        "an object's background, a style's shape)",
    )
    p.set_defaults(func=run_images)

    p = sub.add_parser("score", help="fraction of images in a folder that show the expected concept")
    p.add_argument("images_dir", type=Path)
    p.add_argument("--expect", required=True, help="'COLOUR SHAPE' or 'SHAPE', e.g. 'orange star'")
    p.add_argument("--background", default=None, help="also score this background")
    p.add_argument(
        "--numbers",
        type=number_range,
        default=None,
        metavar="FIRST-LAST",
        help="only the images `textinv generate` numbered FIRST to LAST: one call's images, as it reports them",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_score)

    p = sub.add_parser("path", help="print the embedded toy model's folder (plain diffusers loads it)")
    p.add_argument("--family", default="sd1", choices=tuple(TOY_MODEL_DIRS), help="model family (default: sd1)")
    p.set_defaults(func=run_path)

    p = sub.add_parser("build", help="retrain the toy model and the judge from a seed (roughly an hour on 2 CPU cores)")
    p.add_argument(
        "--family",
        default="sd1",
        choices=tuple(TOY_MODEL_DIRS),
        help="which toy model: sd1, or its SDXL-architecture twin sdxl (default: sd1)",
    )
    p.add_argument("--out", type=Path, default=None, help="model folder (default: the family's embedded one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge-only", action="store_true", help="retrain only the judge (a few minutes)")
    p.add_argument("--model-only", action="store_true", help="retrain only the text-to-image model")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run_build)


def number_range(text: str) -> tuple[int, int]:
    """`8-15` -> (8, 15); `8` -> (8, 8)."""
    first, _, last = text.partition("-")
    try:
        numbers = (int(first), int(last or first))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST-LAST, e.g. 8-15") from None
    if numbers[0] > numbers[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: FIRST must not exceed LAST")
    return numbers


def run_list(args: argparse.Namespace) -> int:
    from textinv.toy import world

    data = {"shapes": list(world.SHAPES), "colours": list(world.COLOURS), "backgrounds": list(world.BACKGROUNDS)}
    if args.json:
        print(json.dumps(data))
    else:
        for key, values in data.items():
            print(f"{key}: {', '.join(values)}")
    return 0


def run_images(args: argparse.Namespace) -> int:
    from textinv.errors import TextinvError
    from textinv.toy import world

    if args.num < 1:
        raise TextinvError(f"-n must be at least 1 (got {args.num})")
    paths = world.write_concept_images(
        args.concept, args.out, args.num, background=args.background, seed=args.seed, captions=args.captions
    )
    captioned = " with captions (img_NN.txt)" if args.captions else ""
    print(f"wrote {len(paths)} images of {args.concept!r} to {args.out}{captioned}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    from textinv.toy import judge, world

    result = judge.score_folder(args.images_dir, args.expect, args.background, args.numbers)
    if args.json:
        print(json.dumps(result))
    else:
        rates = ", ".join(f"{k} {v:.0%}" for k, v in result.items() if k not in ("match", "n"))
        print(f"{result['match']:.0%} of {result['n']} images show {world.with_article(args.expect)} ({rates})")
    return 0


def run_path(args: argparse.Namespace) -> int:
    from textinv.models import toy_model_dir

    print(toy_model_dir(args.family))
    return 0


def run_build(args: argparse.Namespace) -> int:
    import torch

    from textinv.models import toy_model_dir
    from textinv.toy import build, judge

    torch.set_num_threads(args.threads)
    if not args.model_only:
        model = judge.train_judge(seed=args.seed, report=log.info)
        acc = judge.measure(model)
        log.info(
            "judge accuracy on fresh images (clean: 2000; each unclear kind: 500):\n%s", judge.accuracy_report(acc)
        )
        judge.save_judge(model, accuracy=acc)
    if not args.judge_only:
        cfg = build.config_for(args.family, seed=args.seed, threads=args.threads)
        build.build(cfg, args.out or toy_model_dir(args.family), report=log.info)
    return 0
