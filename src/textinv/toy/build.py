"""The recipe that trains the embedded toy text-to-image models on the shapes world (`textinv toy build`).

Why a recipe and not just weights: the toy models must be reproducible from a seed on a laptop CPU.
Each is a standard diffusers pipeline (AutoencoderKL, UNet2DConditionModel, CLIP text encoders, the real
CLIP tokenizer, DDIMScheduler), so nothing downstream special-cases it: a StableDiffusionPipeline for
`--family sd1`, and for `--family sdxl` its twin, a StableDiffusionXLPipeline (two text encoders, the
UNet's added text-and-time conditioning; what differs is in `toy/architecture.py`). Three phases:
1. the VAE learns to reconstruct 32 px images (latents 8x8x8);
2. each text encoder, from scratch, learns to read a caption's shape, colour and background (real SD's
   CLIP arrives pretrained; trained jointly with the UNet instead, it never told the shape words apart);
3. the UNet learns to draw captioned latents, with the text encoders frozen (as in real SD), so that
   plain words ("red", "star", "on a blue background") and the trainer's prompt templates mean
   something, and a single learned token vector can stand in for "orange star". It is conditioned
   through textinv's own training adapter of the family, so the toy learns what `textinv train` feeds it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from textinv.toy import world
from textinv.toy.architecture import EncoderSpec, architecture

log = logging.getLogger(__name__)

# The toy model's recommended textinv settings (written to its textinv.json): they replace diffusers'
# SD-sized defaults for flags the user omits, so that `textinv train` learns a concept in under
# 2 minutes on 2 CPU cores and `textinv generate` samples at the native 32 px.
RECOMMENDED_SETTINGS = {
    "train": {
        "resolution": world.IMAGE_SIZE,
        "train_batch_size": 8,
        "max_train_steps": 600,
        "learning_rate": 3e-3,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 0,
        # Min-SNR weighting: unweighted, the near-pure-noise timesteps (where 5 images' backgrounds and
        # layout dominate the loss) pulled a star's vector toward squares (bench/toy_targets.py).
        "snr_gamma": 5.0,
        "report_to": "none",
        # The world never draws a mirror image: a flipped checkered example has its checker phase inverted,
        # which the model has never seen, and the bundled style then drew checkered in 24 of 32 samples, not 32.
        "flip_p": 0.0,
        # A toy step takes 0.06-0.1 s on a CPU: timing kernels cannot pay, and both convolution sets tie there
        # (oneDNN's GEMM is slower), so the kernels are fixed and every run of one command rounds alike.
        "cpu_conv": "onednn",
        "cpu_matmul": "blas",
        # A style (one background across shapes) needs larger steps than an object, and the near-pure-noise
        # timesteps that Min-SNR turns down are where a background is learned (bench/toy_targets.py).
        "by_property": {"style": {"learning_rate": 1e-2, "snr_gamma": 0}},
    },
    # The first 40 % of the steps unguided: guiding them drew "a photo of a circle" orange in 15 of 32 samples
    # (and a star red in 16), so the initializer alone matched a red star or an orange circle in ~50 %.
    "generate": {"num_inference_steps": 25, "guidance_scale": 4.0, "skip_early_cfg": 0.4, "height": 32, "width": 32},
}
TOKENIZER_SOURCE = Path(__file__).resolve().parent / "model" / "tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
# The keys of a CLIP text encoder file that sit outside `text_model.` in every transformers version.
CLIP_TOP_LEVEL_KEYS = ("text_model.", "text_projection.")


@dataclass
class BuildConfig:
    """Every knob of the recipe; the defaults are the shipped SD 1 model's (`config_for` gives each family's)."""

    family: str = "sd1"  # "sdxl": the StableDiffusionXLPipeline twin
    seed: int = 0
    num_images: int = 24000
    vae_images: int = 4000  # the first images of the same stream: flat shapes need few to reconstruct
    vae_steps: int = 1800
    vae_batch_size: int = 16
    vae_learning_rate: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_channels: tuple[int, ...] = (16, 32, 64)  # a downsampling per extra level: 32 px -> 8x8 latents
    latent_channels: int = 8
    unet_steps: int = 5000
    batch_size: int = 32
    learning_rate: float = 8e-4
    warmup_steps: int = 150
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    text_hidden: int = 128  # the (first) text encoder's width
    text_hidden_2: int = 96  # sdxl: text_encoder_2's width (and projection)
    time_embed_dim: int = 16  # sdxl: the UNet's addition_time_embed_dim (SDXL 1.0: 256)
    text_layers: int = 3
    text_steps: int = 200  # phase 2: the text encoder learns to tell the words apart (0: skip)
    text_batch_size: int = 128
    text_learning_rate: float = 1e-3
    unet_channels: tuple[int, ...] = (48, 96)
    unet_layers: int = 1
    threads: int = 2


# The SDXL twin's text encoders, narrower then wider as SDXL's CLIP-L (768) and CLIP-G (1280); the rest of the
# recipe is the SD 1 toy's. 64 + 96 rather than 128 + 128 keeps the folder under 30 MB: the 49408-row token
# tables are most of it.
FAMILY_DEFAULTS: dict[str, dict] = {"sd1": {}, "sdxl": {"text_hidden": 64, "text_hidden_2": 96}}


def config_for(family: str = "sd1", **overrides) -> BuildConfig:
    """The shipped model's recipe for `family`, with `overrides` (tests use tiny ones)."""
    architecture(family)  # a one-line error for an unknown family
    return BuildConfig(**{"family": family, **FAMILY_DEFAULTS[family], **overrides})


def latent_size(cfg: BuildConfig) -> int:
    return world.IMAGE_SIZE // 2 ** (len(cfg.vae_channels) - 1)


def _vae(cfg: BuildConfig):
    from diffusers import AutoencoderKL

    levels = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=1,
        # More channels than SD's 4: small latents with 4 channels blur edges and colours after a CPU-sized run.
        latent_channels=cfg.latent_channels,
        norm_num_groups=16,
        sample_size=world.IMAGE_SIZE,
    )


def _unet(cfg: BuildConfig):
    from diffusers import UNet2DConditionModel

    levels = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size(cfg),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=cfg.unet_layers,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        attention_head_dim=8,
        norm_num_groups=16,
        **architecture(cfg.family).unet_kwargs(cfg),
    )


def _text_encoder(cfg: BuildConfig, spec: EncoderSpec):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection if spec.projection else CLIPTextModel
    return model(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=spec.hidden,
            intermediate_size=spec.hidden * 2,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=spec.hidden,
        )
    )


def load_tokenizers(cfg: BuildConfig) -> list:
    """The real CLIP tokenizer for each text encoder (SDXL's second pads with "!")."""
    from transformers import CLIPTokenizer

    return [
        CLIPTokenizer.from_pretrained(TOKENIZER_SOURCE, **({"pad_token": s.pad_token} if s.pad_token else {}))
        for s in architecture(cfg.family).encoders(cfg)
    ]


def _scheduler():
    from diffusers import DDIMScheduler

    # SD-2-style v-prediction on a zero-terminal-SNR schedule ("Common Diffusion Noise Schedules and
    # Sample Steps are Flawed"): with epsilon prediction, a CPU-sized model's small noise errors at high
    # t are amplified ~100x into x0 at 8x8 latents and sampling diverges; v-prediction does not amplify.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def render_dataset(n: int, seed: int) -> tuple[list[world.Scene], torch.Tensor]:
    """`n` scenes and their images as a float tensor in [-1, 1], shape (n, 3, 32, 32)."""
    scenes = list(world.scenes(n, seed))
    arr = np.stack([np.asarray(world.render(s)) for s in scenes])
    pixels = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return scenes, pixels


def train_vae(cfg: BuildConfig, pixels: torch.Tensor, report: Callable[[str], None]):
    torch.manual_seed(cfg.seed)
    vae = _vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.vae_steps):
        # Constant, then a linear decay over the last 30%: a cosine decays too early for a short run.
        lr = cfg.vae_learning_rate * min(1.0, (step + 1) / 50, (cfg.vae_steps - step) / (0.3 * cfg.vae_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x = pixels[torch.randint(0, len(pixels), (cfg.vae_batch_size,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            report(f"vae step {step} loss {loss.item():.4f}")
    vae.eval()
    return vae


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (sampled per step, as the trainer does)."""
    means, stds = [], []
    for chunk in pixels.split(256):
        dist = vae.encode(chunk).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def _token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def caption_labels(scene: world.Scene, caption: str) -> tuple[int, int, int]:
    """(shape, colour, background) class indices of what `caption` says about `scene`.

    An attribute the caption does not name gets its own last class, "unsaid": the encoder must tell
    "a star" from "a red star", or the UNet cannot learn that "a star" comes in every colour (without
    it, shape-only prompts drew mostly red or brown shapes).
    """
    words = caption.split()
    colours, backgrounds = list(world.COLOURS), list(world.BACKGROUNDS)
    shape = world.SHAPES.index(scene.shape) if scene.shape in words else len(world.SHAPES)
    colour = colours.index(scene.colour) if f"{scene.colour} {scene.shape}" in caption else len(colours)
    bg = scene.background
    said = f"style of {bg}" in caption or f" on {bg}" in caption or f"a {bg} background" in caption
    background = backgrounds.index(bg) if said else len(backgrounds)
    return shape, colour, background


def pretrain_text_encoder(
    cfg: BuildConfig, scenes: list[world.Scene], tokenizer, report: Callable[[str], None], index: int = 0
):
    """Phase 2: text encoder `index` learns to read shape, colour and background out of a caption.

    Why: trained jointly from scratch with the UNet, it separated colours and backgrounds but not shape
    words (the UNet then drew the same shape for every word). Real SD's CLIP arrives pretrained; this is
    the toy's stand-in: three linear heads on the pooled (end-of-text) output, cross-entropy, then the
    heads are dropped and the encoder is a plain CLIPTextModel. SDXL's text_encoder_2 is read through its
    projected pooled output, as that is what its UNet is given (`text_embeds`).
    """
    spec = architecture(cfg.family).encoders(cfg)[index]
    torch.manual_seed(cfg.seed + 1 + 10 * index)
    text_encoder = _text_encoder(cfg, spec)
    sizes = (len(world.SHAPES) + 1, len(world.COLOURS) + 1, len(world.BACKGROUNDS) + 1)  # + "unsaid"
    heads = torch.nn.ModuleList(torch.nn.Linear(spec.hidden, n) for n in sizes)
    params = list(text_encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.text_learning_rate, weight_decay=0.0)
    rng = random.Random(cfg.seed + 4 + 10 * index)
    name = "text" if index == 0 else f"text {index + 1}"
    for step in range(cfg.text_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.text_learning_rate * min(1.0, (step + 1) / 50)
        batch = [rng.choice(scenes) for _ in range(cfg.text_batch_size)]
        captions = ["" if rng.random() < cfg.caption_dropout else s.caption(rng) for s in batch]
        labels = torch.tensor([caption_labels(s, c) for s, c in zip(batch, captions, strict=True)])
        out = text_encoder(_token_ids(tokenizer, captions))
        pooled = out.text_embeds if spec.projection else out.pooler_output
        logits = [head(pooled) for head in heads]
        loss = sum(F.cross_entropy(lg, labels[:, i]) for i, lg in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.text_steps - 1:
            acc = [(lg.argmax(1) == labels[:, i]).float().mean().item() for i, lg in enumerate(logits)]
            rates = "/".join(f"{a:.2f}" for a in acc)
            report(f"{name} step {step} loss {loss.item():.4f} accuracy shape/colour/background {rates}")
    return text_encoder.requires_grad_(False).eval()


def _ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    torch._foreach_lerp_(ema, params, 1.0 - decay)


def train_unet(
    cfg: BuildConfig,
    unet,
    scheduler,
    scenes: list[world.Scene],
    means: torch.Tensor,
    stds: torch.Tensor,
    scaling: float,
    condition: Callable[[list[str]], tuple[torch.Tensor, dict]],
    report: Callable[[str], None],
    snapshot: Callable | None = None,
    snapshot_every: int = 0,
):
    """Phase 3: train the UNet on captioned latents; `condition(captions)` reads them with the frozen encoders."""
    params = list(unet.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0, betas=(0.9, 0.99))
    rng = random.Random(cfg.seed + 2)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    started = time.time()
    for step in range(cfg.unet_steps):
        warm = min(1.0, (step + 1) / cfg.warmup_steps)
        lr = cfg.learning_rate * warm * 0.5 * (1 + math.cos(math.pi * step / cfg.unet_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(scenes), (cfg.batch_size,), generator=g)
        captions = ["" if rng.random() < cfg.caption_dropout else scenes[i].caption(rng) for i in idx.tolist()]
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scaling
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.no_grad():
            hidden, unet_kwargs = condition(captions)
        pred = unet(noisy, t, hidden, **unet_kwargs).sample
        loss = F.mse_loss(pred, scheduler.get_velocity(latents, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # The usual EMA warm-up: early weights must not linger in the average.
        _ema_update(ema, [p.detach() for p in params], min(cfg.ema_decay, (1 + step) / (10 + step)))
        if snapshot is not None and snapshot_every and step > 0 and step % snapshot_every == 0:
            with torch.no_grad():
                live = [p.detach().clone() for p in params]
                for p, e in zip(params, ema, strict=True):
                    p.copy_(e)
                snapshot(step)
                for p, v in zip(params, live, strict=True):
                    p.copy_(v)
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            report(f"unet step {step} loss {loss.item():.4f} lr {lr:.2e} ({time.time() - started:.0f} s)")
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    return unet.eval()


def _cached_vae(cfg: BuildConfig, pixels: torch.Tensor, cache_dir: Path | None, report):
    """Phase 1, skipped when `cache_dir` holds a VAE trained with the same settings (it is deterministic)."""
    phase1 = ("seed", "threads", "latent_channels")
    key = json.dumps({k: v for k, v in asdict(cfg).items() if k.startswith("vae") or k in phase1})
    if cache_dir is not None and (cache_dir / "vae.json").is_file():
        if (cache_dir / "vae.json").read_text() == key:
            vae = _vae(cfg)
            vae.load_state_dict(torch.load(cache_dir / "vae.pt", weights_only=True))
            report(f"vae: reused the phase-1 result cached in {cache_dir}")
            return vae.eval()
    vae = train_vae(cfg, pixels[: cfg.vae_images], report)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch.save(vae.state_dict(), cache_dir / "vae.pt")
        (cache_dir / "vae.json").write_text(key)
    return vae


def build(
    cfg: BuildConfig,
    out_dir: str | Path,
    report: Callable[[str], None] = log.info,
    cache_dir: Path | None = None,
    snapshot_every: int = 0,
) -> Path:
    """Run the whole recipe and save the family's pipeline (fp16 safetensors) to `out_dir`.

    `snapshot_every` > 0 also saves the pipeline-so-far to `<out_dir>-step<N>` (to try it early).
    """
    torch.set_num_threads(cfg.threads)
    started = time.time()
    out = Path(out_dir)
    report(f"rendering {cfg.num_images} images (seed {cfg.seed})")
    scenes, pixels = render_dataset(cfg.num_images, cfg.seed)
    vae = _cached_vae(cfg, pixels, cache_dir, report)
    means, stds = encode_latents(vae, pixels)
    with torch.no_grad():
        held_out = pixels[-256:]
        error = (vae.decode(means[-256:]).sample - held_out).abs().mean().item() * 127.5
    report(f"vae reconstruction error on 256 held-out images: {error:.1f}/255 per channel")
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    report(f"latent scaling factor {scaling:.4f} ({time.time() - started:.0f} s)")
    tokenizers = load_tokenizers(cfg)
    encoders = [pretrain_text_encoder(cfg, scenes, tok, report, index=i) for i, tok in enumerate(tokenizers)]
    torch.manual_seed(cfg.seed + 5)
    pipe = architecture(cfg.family).assemble(vae, encoders, tokenizers, _unet(cfg), _scheduler())

    def snapshot(step: int) -> None:
        save_pipeline(copy.deepcopy(pipe), Path(f"{out}-step{step}"), cfg)
        report(f"snapshot saved to {out}-step{step}")

    train_unet(
        cfg, pipe.unet, pipe.scheduler, scenes, means, stds, scaling, conditioner(cfg, pipe), report, snapshot,
        snapshot_every,
    )  # fmt: skip
    save_pipeline(pipe, out, cfg)
    (out / "textinv.json").write_text(json.dumps(RECOMMENDED_SETTINGS, indent=2) + "\n")
    (out / "build.json").write_text(
        json.dumps({"config": asdict(cfg), "seconds": round(time.time() - started)}, indent=2) + "\n"
    )
    report(f"saved to {out} in {time.time() - started:.0f} s")
    return out


def conditioner(cfg: BuildConfig, pipe) -> Callable[[list[str]], tuple[torch.Tensor, dict]]:
    """Captions -> (UNet context, UNet kwargs), through the family's textinv training adapter (`families/`).

    Why the trainer's adapter: the UNet then learns exactly the conditioning that `textinv train` gives it
    (for SDXL: both encoders' penultimate hidden states, `text_encoder_2`'s pooled projection, and each
    image's `add_time_ids`, here (32, 32, 0, 0, 32, 32): the world's images are drawn at 32 px, uncropped).
    """
    from textinv.families import adapter_for

    adapter = adapter_for(pipe)
    adapter.set_images([(world.IMAGE_SIZE, world.IMAGE_SIZE)], world.IMAGE_SIZE, center_crop=False)
    family = architecture(cfg.family)

    def condition(captions: list[str]) -> tuple[torch.Tensor, dict]:
        image_idx = torch.zeros(len(captions), dtype=torch.long)
        cond = adapter.condition(adapter.tokenize(captions), image_idx, torch.float32)
        dropped = torch.tensor([not caption for caption in captions])
        return family.drop(cond.hidden_states, cond.unet_kwargs, dropped)

    return condition


def load_text_encoder_in_float32(out: Path, folder: str = "text_encoder") -> None:
    """Mark the fp16-stored text encoder to load as float32, as diffusers loads the fp16-stored UNet and VAE.

    Why: transformers loads a model in the `dtype` its config names, diffusers its models in float32, so
    a plain `StableDiffusionPipeline.from_pretrained(folder)` would pair an fp16 text encoder with an fp32
    UNet and fail ("mat1 and mat2 must have the same dtype"). Only the config changes; the stored values do not.
    """
    config_path = out / folder / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def store_clip_keys_for_transformers_4(folder: Path) -> bool:
    """Store a CLIP text encoder's weights under `text_model.`, the layout transformers 4 writes and 4 and 5 both read.

    Why: transformers 5 saves a `CLIPTextModel` without that prefix, and transformers 4 (textinv supports 4.40 on)
    then finds none of its weights in the file and runs a randomly initialised text encoder, with only a warning.
    Keys are renamed, values untouched. Returns whether the file changed.
    """
    from safetensors.torch import load_file, save_file

    from textinv.atomic import write_atomic

    path = folder / "model.safetensors"
    tensors = load_file(path)
    renamed = {k if k.startswith(CLIP_TOP_LEVEL_KEYS) else f"text_model.{k}": v for k, v in tensors.items()}
    if renamed.keys() == tensors.keys():
        return False
    write_atomic(path, lambda tmp: save_file(renamed, tmp, metadata={"format": "pt"}))
    return True


def tokenizer_files(spec: EncoderSpec) -> dict[str, bytes]:
    """The real CLIP tokenizer's small files for one encoder; SDXL's second names its "!" pad token."""
    files = {name: (TOKENIZER_SOURCE / name).read_bytes() for name in TOKENIZER_FILES}
    if spec.pad_token:
        config = json.loads(files["tokenizer_config.json"])
        config["pad_token"] = spec.pad_token
        files["tokenizer_config.json"] = (json.dumps(config, indent=2) + "\n").encode()
    return files


def save_pipeline(pipe, out: Path, cfg: BuildConfig | None = None) -> None:
    """Save in fp16 safetensors (loaded as float32), each tokenizer as vocab.json + merges.txt (no tokenizer.json).

    transformers 5 saves a tokenizer as tokenizer.json only, so the real CLIP tokenizer's small files
    are copied in instead; they are read first because `out` may be the folder they come from.
    """
    specs = architecture((cfg or BuildConfig()).family).encoders(cfg or BuildConfig())
    files = {spec.suffix: tokenizer_files(spec) for spec in specs}
    if out.exists():
        encoder_parts = [f"{part}{suffix}" for suffix in files for part in ("text_encoder", "tokenizer")]
        for part in ("unet", "vae", "scheduler", *encoder_parts):
            shutil.rmtree(out / part, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    pipe.to(torch.float32)
    for suffix, tokenizer in files.items():
        load_text_encoder_in_float32(out, f"text_encoder{suffix}")
        store_clip_keys_for_transformers_4(out / f"text_encoder{suffix}")
        shutil.rmtree(out / f"tokenizer{suffix}")
        (out / f"tokenizer{suffix}").mkdir()
        for name, data in tokenizer.items():
            (out / f"tokenizer{suffix}" / name).write_bytes(data)
