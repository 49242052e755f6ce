"""`textinv generate`: the flags of a `generation.GenerationRequest`; the work is `generation.generate`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from textinv.generation import DTYPES
    from textinv.sample import SCHEDULERS, scheduler_key

    p = subparsers.add_parser(
        "generate",
        help="generate images from prompts that use learned concepts",
        description="Generate images with learned concepts. Example: "
        'textinv generate "a photo of <cat-toy>" --concept out/ -n 4',
    )
    p.add_argument("prompt", nargs="+", help="one or more prompts; each gets -n images")
    p.add_argument(
        "--model",
        "--pretrained_model_name_or_path",
        dest="model",
        default=None,
        help="diffusers folder, cached hub id or .safetensors checkpoint (default: the embedded toy model)",
    )
    p.add_argument(
        "--concept",
        action="append",
        default=[],
        metavar="SOURCE[=TOKEN]",
        help="embedding file, training output or concepts-library folder, or cached hub repo id; "
        "=TOKEN renames it; repeat for several concepts",
    )
    p.add_argument("-n", "--num-images", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: model's, else 30)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: model's, else 7.5)")
    p.add_argument(
        "--skip-early-cfg",
        "--skip_early_cfg",
        dest="skip_early_cfg",
        type=float,
        default=None,
        metavar="FRACTION",
        help="sample this fraction of the first (noisiest) steps without CFG, as A1111's 'Skip Early CFG': "
        "what the prompt leaves open (a colour) stays varied (default: model's, else 0 = guide every step)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed+i")
    p.add_argument(
        "--scheduler",
        type=scheduler_key,
        choices=sorted(SCHEDULERS),
        default=None,
        help="default: the model's own",
    )
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--height", type=int, default=None, help="default: the model's native size")
    p.add_argument("--width", type=int, default=None, help="default: the model's native size")
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: outputs/<date-time>); into one that holds images the numbering continues, "
        "as in AUTOMATIC1111, and nothing is overwritten",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: float16 on GPU, float32 on CPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textinv.generation import GenerationRequest, generate

    request = GenerationRequest(
        prompts=tuple(args.prompt),
        model=args.model,
        concepts=tuple(args.concept),
        num_images=args.num_images,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        skip_early_cfg=args.skip_early_cfg,
        scheduler=args.scheduler,
        negative=args.negative,
        height=args.height,
        width=args.width,
        out_dir=Path(args.out) if args.out else None,
        device=args.device,
        dtype=args.dtype,
    )
    result = generate(request, progress=not args.quiet)
    n = len(result.images)
    print(
        f"wrote {n} image{'' if n == 1 else 's'} (numbers {result.first_number}-{result.last_number}) "
        f"and {result.grid.name} to {result.out_dir}/"
    )
    if result.first_number > 0:
        print(
            f"earlier images in {result.out_dir}/ are kept; this call's alone: "
            f"textinv toy score {result.out_dir} --numbers {result.first_number}-{result.last_number} --expect ..."
        )
    return 0
