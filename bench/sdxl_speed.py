"""Steps/s and peak memory of `textinv train` on SDXL against diffusers' textual_inversion_sdxl.py.

The method of `train_speed.py` (its runner, step timer, table and RESULTS.md record), on an SDXL 1.0-sized
pipeline: SDXL base 1.0's UNet, VAE and both text encoders' configs with random weights, built in code and
cached (about 14 GB on disk, 3.5 B parameters; fp32 training needs well over 30 GB of RAM per trainer). Both
trainers get the same flags; textinv's CPU kernel planning and cached posteriors are what it brings.

    TEXTINV_REFERENCE_SCRIPT_SDXL=/path/to/diffusers/examples/textual_inversion/textual_inversion_sdxl.py \\
        python bench/sdxl_speed.py                        # CPU, SDXL-sized, 256 px, fp32, batch 1
    python bench/sdxl_speed.py --size tiny --steps 3      # seconds: checks the bench itself
    python bench/sdxl_speed.py --rounds 3                 # trainers alternating, medians
    python bench/sdxl_speed.py --device cuda --flags compiled='--torch_compile reduce-overhead'
                                                          # GPU: 1024 px, fp16, peak torch.cuda memory

The reference script's `torchvision.transforms` (flip, centre and random crop) is served by bench/shims.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import sys
from pathlib import Path

import train_speed as ts

SIZES = ("sdxl", "tiny")


def sdxl_configs(size: str) -> dict:
    """UNet / VAE / both text encoders of SDXL base 1.0 ("sdxl"), or a tiny look-alike ("tiny")."""
    if size == "sdxl":
        unet = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128,
                    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                    cross_attention_dim=2048, addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2816)  # fmt: skip
        vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=1024,
                   scaling_factor=0.13025)  # fmt: skip
        text_l = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                      hidden_act="quick_gelu", projection_dim=768)  # fmt: skip
        text_g = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                      hidden_act="gelu", projection_dim=1280)  # fmt: skip
    elif size == "tiny":
        unet = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16,
                    transformer_layers_per_block=(1, 1), attention_head_dim=(2, 4), cross_attention_dim=96,
                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 64)  # fmt: skip
        vae = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, scaling_factor=0.13025)
        text_l = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                      hidden_act="quick_gelu", projection_dim=32)  # fmt: skip
        text_g = dict(hidden_size=64, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                      hidden_act="gelu", projection_dim=64)  # fmt: skip
    else:
        raise ValueError(f"unknown size {size!r}")
    n_down = len(unet["block_out_channels"])
    unet.update(in_channels=4, out_channels=4, use_linear_projection=True, addition_embed_type="text_time",
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_down - 1),
                up_block_types=("CrossAttnUpBlock2D",) * (n_down - 1) + ("UpBlock2D",), norm_num_groups=32)  # fmt: skip
    n_vae = len(vae["block_out_channels"])
    vae.update(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
               down_block_types=("DownEncoderBlock2D",) * n_vae,
               up_block_types=("UpDecoderBlock2D",) * n_vae)  # fmt: skip
    for text in (text_l, text_g):
        text.update(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    scheduler = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                     steps_offset=1, timestep_spacing="leading")  # fmt: skip
    return {"unet": unet, "vae": vae, "text_encoder": text_l, "text_encoder_2": text_g, "scheduler": scheduler}


def build_sdxl_pipeline(size: str, out_dir: Path, seed: int = 0) -> Path:
    """Save a StableDiffusionXLPipeline with random weights in diffusers format (once; reused after)."""
    if (out_dir / "model_index.json").is_file():
        return out_dir
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    cfg = sdxl_configs(size)
    torch.manual_seed(seed)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**cfg["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])),
        tokenizer=CLIPTokenizer.from_pretrained(ts.TOKENIZER_DIR),
        tokenizer_2=CLIPTokenizer.from_pretrained(ts.TOKENIZER_DIR, pad_token="!"),  # as SDXL's tokenizer_2
        unet=UNet2DConditionModel(**cfg["unet"]),
        scheduler=EulerDiscreteScheduler(**cfg["scheduler"]),
    )
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(partial, safe_serialization=True)
    partial.rename(out_dir)  # a killed build never leaves a folder that looks complete
    return out_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=SIZES, default="sdxl", help="model size (default: sdxl)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--resolution", type=int, help="default: 256 on CPU, 1024 on CUDA, 32 for --size tiny")
    p.add_argument(
        "--precision", choices=("fp32", "fp16", "bf16"), help="both trainers' (default: fp32 on CPU, fp16 on CUDA)"
    )
    p.add_argument(
        "--flags",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also run `textinv train` with extra flags, labelled NAME; repeatable "
        "(e.g. compiled='--torch_compile reduce-overhead')",
    )
    p.add_argument("--warmup", type=int, default=3, help="steps not timed (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps after warm-up (default 10)")
    p.add_argument("--rounds", type=int, default=1, help="run both trainers this many times, alternating order")
    p.add_argument("--trainers", nargs="+", choices=("textinv", "reference"), default=["textinv", "reference"])
    p.add_argument(
        "--reference",
        type=Path,
        default=Path(os.environ["TEXTINV_REFERENCE_SCRIPT_SDXL"])
        if os.environ.get("TEXTINV_REFERENCE_SCRIPT_SDXL")
        else None,
        help="diffusers' examples/textual_inversion/textual_inversion_sdxl.py ($TEXTINV_REFERENCE_SCRIPT_SDXL)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("TEXTINV_BENCH_CACHE", "/tmp/textinv-bench")),
        help="model, images and run folders ($TEXTINV_BENCH_CACHE, default /tmp/textinv-bench)",
    )
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both trainers (default: torch's own)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per trainer run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=ts.BENCH_DIR / "RESULTS.md", help="append the table here")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to --results")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.resolution = args.resolution or (32 if args.size == "tiny" else 1024 if args.device == "cuda" else 256)
    # What train_speed's record() and table read.
    args.precision = [args.precision or ("fp16" if args.device == "cuda" else "fp32")]
    args.gradient_checkpointing = False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trainers = list(args.trainers)
    if "reference" in trainers and (args.reference is None or not args.reference.is_file()):
        print(
            f"sdxl_speed: skipping the reference column: {args.reference or '$TEXTINV_REFERENCE_SCRIPT_SDXL'} is "
            "not a file. Point it at a copy of diffusers' examples/textual_inversion/textual_inversion_sdxl.py.",
            file=sys.stderr,
        )
        trainers.remove("reference")
    reference = args.reference.resolve() if args.reference else None  # trainers run with the runs folder as cwd
    args.cache = args.cache.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"sdxl_speed: building/loading the {args.size} SDXL pipeline under {args.cache}", file=sys.stderr)
    model = build_sdxl_pipeline(args.size, args.cache / f"pipeline-{args.size}-xl")
    data = ts.write_concept_images(args.cache / "concept")
    env = {"TQDM_MININTERVAL": "5", "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    flag_variants = {name: shlex.split(extra) for name, extra in (v.split("=", 1) for v in args.flags)}
    trainers[1:1] = list(flag_variants)  # after textinv, before the reference
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    shim = [] if importlib.util.find_spec("torchvision") else ["--torchvision-shim", str(ts.SHIMS)]
    load_before = ts.load_average()
    rounds, results = [], []
    for index in range(args.rounds):
        order = trainers[:: -1 if index % 2 else 1]
        results = [_run(args, t, model, data, env, shim, reference, flag_variants.get(t)) for t in order]
        rows = ts.table_rows(results, args.warmup, args.steps, args.device)
        rounds.append(sorted(rows, key=lambda row: trainers.index(row["trainer"])))
    table = ts.format_table(ts.combine_rounds(rounds), args.device)
    print(table)
    if not args.no_record:
        title = f"sdxl_speed: {args.size}, {args.device}, {args.resolution} px, batch 1, {args.precision[0]}"
        ts.record(args.results, title, ts.speed_details(args, load_before, ts.load_average()), table, "sdxl_speed.py")
    return 0 if all(r.ok for r in results) else 1


def _run(args, trainer: str, model: Path, data: Path, env: dict, shim: list[str], reference: Path | None,
         extra_flags: list[str] | None = None):  # fmt: skip
    """One trainer's run; `extra_flags` makes it a labelled `textinv train` variant (`--flags NAME=FLAGS`)."""
    precision = args.precision[0]
    out = args.cache / "runs" / f"xl-{trainer}-{precision}"
    shutil.rmtree(out, ignore_errors=True)
    # A long run stopped after the measured steps: textinv plans its CPU kernels as a user's real run would.
    flags = ts.trainer_flags(model, data, out, resolution=args.resolution, steps=ts.LONG_RUN,
                             precision=precision, gradient_checkpointing=False, seed=args.seed)  # fmt: skip
    flags += extra_flags or []
    if trainer == "textinv" or extra_flags is not None:
        path = os.pathsep.join(filter(None, [str(ts.REPO / "src"), os.environ.get("PYTHONPATH")]))
        tail, extra = ["-m", "textinv", "train"], {"PYTHONPATH": path}
    else:
        tail, extra = [*shim, str(reference)], {}
    print(f"sdxl_speed: running {trainer} ...", file=sys.stderr)
    result = ts.run_trainer(trainer, tail, flags, args.cache / "runs", precision, {**env, **extra}, args.timeout,
                            stop_after=args.warmup + args.steps)  # fmt: skip
    if not result.ok:
        text = result.log_path.read_text(errors="replace")[-3000:] if result.log_path else ""
        print(f"sdxl_speed: {trainer} failed (exit {result.returncode}):\n{text}", file=sys.stderr)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
