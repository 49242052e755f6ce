"""`textinv generate`: prompts in, PNGs (with A1111-style `parameters` metadata) and a grid.png out."""

from __future__ import annotations

import argparse
import functools
import logging
import time
from pathlib import Path

from textinv.errors import TextinvError

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "float16", "bfloat16")


def register(subparsers) -> None:
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
    p.add_argument("--out", default=None, help="output folder (default: outputs/<date-time>)")
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: float16 on GPU, float32 on CPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textinv.concepts import load_concept
    from textinv.models import load_pipeline, resolve_model_source
    from textinv.sample import (
        check_skip_early_cfg,
        generate_images,
        infotext,
        make_grid,
        model_recipe,
        native_size,
        save_png,
        set_scheduler,
    )

    if args.num_images < 1:
        raise TextinvError("-n must be at least 1")
    if args.skip_early_cfg is not None:
        check_skip_early_cfg(args.skip_early_cfg)
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    source = resolve_model_source(args.model)
    # The flags the user gave, over the model's recommended recipe, over diffusers' (30 steps, 7.5).
    recipe = model_recipe(source).with_overrides(
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        scheduler=args.scheduler,
        skip_early_cfg=args.skip_early_cfg,
        height=args.height,
        width=args.width,
    )

    pipe = load_pipeline(source, torch_dtype=dtype).to(device)
    tokens = [load_concept(pipe, src, token) for src, token in map(split_concept_arg, args.concept)]
    for token in tokens:
        if not any(token in prompt for prompt in args.prompt):
            log.warning("note: concept %s is loaded but no prompt mentions it", token)
    size = native_size(pipe)
    recipe = recipe.with_overrides(height=recipe.height or size, width=recipe.width or size)
    sampler = set_scheduler(pipe, recipe.scheduler)
    model_name = "textinv-toy" if source.kind == "toy" else Path(source.path_or_id).name

    out_dir = Path(args.out or Path("outputs") / time.strftime("%Y%m%d-%H%M%S"))
    describe = functools.partial(
        infotext,
        steps=recipe.num_inference_steps,
        guidance_scale=recipe.guidance_scale,
        width=recipe.width,
        height=recipe.height,
        sampler=sampler,
        negative_prompt=args.negative,
        model=model_name,
        concepts=tokens,
        skip_early_cfg=recipe.skip_early_cfg,
    )
    all_images = []
    for prompt in args.prompt:
        images = generate_images(
            pipe,
            prompt,
            num_images=args.num_images,
            seed=args.seed,
            negative_prompt=args.negative,
            scheduler=None,  # already set above, once for all prompts
            progress=not args.quiet,
            **recipe.generate_kwargs(),
        )
        for i, image in enumerate(images):
            seed = args.seed + i
            save_png(out_dir / f"{len(all_images):04d}-seed{seed}.png", image, describe(prompt, seed=seed))
            all_images.append(image)
    grid_text = describe(" | ".join(args.prompt), seed=args.seed)
    save_png(out_dir / "grid.png", make_grid(all_images, cols=args.num_images), grid_text)
    n = len(all_images)
    print(f"wrote {n} image{'' if n == 1 else 's'} and grid.png to {out_dir}/")
    return 0


def split_concept_arg(value: str) -> tuple[str, str | None]:
    """`SOURCE=TOKEN` -> (SOURCE, TOKEN); a source that itself contains '=' and exists is kept whole."""
    if "=" in value and not Path(value).exists():
        source, token = value.rsplit("=", 1)
        if not token.strip():
            raise TextinvError(f"--concept {value!r}: empty token after '='; write SOURCE=TOKEN or just SOURCE")
        return source, token.strip()
    return value, None


def pick_device_and_dtype(device: str, dtype: str):
    """Resolve --device/--dtype: fp16 on GPUs by default, fp32 on CPU (fp16 on CPU is refused)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TextinvError("--device cuda given but no CUDA GPU is available; use --device cpu")
    on_cpu = device == "cpu"
    if dtype == "auto":
        dtype = "float32" if on_cpu else "float16"
    if dtype == "float16" and on_cpu:
        raise TextinvError("float16 needs a GPU; on CPU use --dtype float32 (default) or bfloat16")
    return device, getattr(torch, dtype)
