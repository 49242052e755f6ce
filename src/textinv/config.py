"""`TrainConfig`: every flag of diffusers' textual_inversion.py, with the same name, meaning and default.

The CLI builds its parser from these fields, so flag names, defaults and help live in one place.
Precedence for each value: the user's flag, then the model's recommended settings
(`textinv.json` beside the model, see `models.model_defaults`), then the default below.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from textinv.errors import TextinvError

log = logging.getLogger(__name__)

LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)

REPORT_TO_CHOICES = ("tensorboard", "wandb", "comet_ml", "all", "none")


def _flag(default: Any, help: str, *, aliases: tuple[str, ...] = (), **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "aliases": aliases, **extra})


@dataclass
class TrainConfig:
    """A textual-inversion run. Field names are the diffusers flag names (without `--`)."""

    # Model
    pretrained_model_name_or_path: str | None = _flag(
        None,
        "Model (SD 1.x, 2.x or SDXL): a diffusers folder, a hub id in the local cache, or a .safetensors file. "
        "Omitted: the embedded toy model.",
        aliases=("--model",),
    )
    revision: str | None = _flag(None, "Revision (branch, tag or commit) of a hub model.")
    variant: str | None = _flag(None, "Weight variant to load, e.g. fp16.")
    tokenizer_name: str | None = _flag(None, "Tokenizer name or path, if not the model's own.")
    # Concept
    train_data_dir: str | None = _flag(
        None, "Folder with the 3-5 example images of the concept.", aliases=("--data",), required=True
    )
    placeholder_token: str | None = _flag(
        None,
        "The new token that stands for the concept, e.g. '<cat-toy>'.",
        aliases=("--token",),
        required=True,
    )
    initializer_token: str | None = _flag(
        None,
        "An existing word whose embedding starts the new token (one token), or several words: with --num_vectors "
        "N and W words, vector i starts as word i*W//N (AUTOMATIC1111's rule: 'orange star' with 4 vectors gives "
        "orange, orange, star, star).",
        aliases=("--init",),
        required=True,
    )
    learnable_property: str = _flag(
        "object", "What the images share: an 'object' or a 'style'.", choices=("object", "style")
    )
    template_file: str | None = _flag(
        None,
        "A text file of prompt templates, one per line, as AUTOMATIC1111's: [name] is the concept's token, "
        "[filewords] the image's caption, read from IMAGE.txt beside each image (empty when missing). "
        "Default: diffusers' templates for --learnable_property.",
    )
    ignore_captions: bool = _flag(
        False,
        "Without --template_file, images with a caption (IMAGE.txt beside them) train on diffusers' templates, "
        "half of them followed by ' CAPTION' (all of them when every image has the same caption); this flag "
        "leaves captions out, as diffusers' script does.",
    )
    repeats: int = _flag(100, "How many times each image appears per epoch.")
    num_vectors: int = _flag(1, "Embedding vectors for the concept (<tok>, <tok>_1, ...).")
    # Output
    output_dir: str = _flag("text-inversion-model", "Where embeddings, checkpoints and logs go.", aliases=("--out",))
    overwrite_output_dir: bool = _flag(
        False, "Allow starting a new run in an output_dir that holds a finished or interrupted run."
    )
    seed: int | None = _flag(None, "Seed for reproducible training.")
    # Data
    resolution: int = _flag(512, "Images are resized to this square size.")
    center_crop: bool = _flag(
        False, "Centre-crop images to a square before resizing (SDXL also conditions on the crop's corner)."
    )
    flip_p: float = _flag(
        0.5,
        "Probability of mirroring a training image left-right (diffusers' dataset flips with 0.5). Use 0 when a "
        "mirror image is not the concept: lettering, a one-sided object, a texture with a fixed phase.",
    )
    # Optimisation
    train_batch_size: int = _flag(16, "Batch size per device.", aliases=("--batch",))
    num_train_epochs: int = _flag(
        100, "Epochs; only used when --max_train_steps is 0 (diffusers: max_train_steps wins)."
    )
    max_train_steps: int = _flag(5000, "Total optimisation steps; overrides --num_train_epochs.", aliases=("--steps",))
    gradient_accumulation_steps: int = _flag(1, "Micro-batches accumulated per optimisation step.")
    gradient_checkpointing: bool = _flag(False, "Trade compute for memory (recompute activations).")
    learning_rate: float = _flag(1e-4, "Learning rate after warm-up.", aliases=("--lr",))
    scale_lr: bool = _flag(False, "Multiply the LR by gradient_accumulation_steps * train_batch_size * num_processes.")
    lr_scheduler: str = _flag("constant", "LR schedule.", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = _flag(500, "Warm-up steps of the LR schedule.")
    lr_num_cycles: int = _flag(1, "Hard restarts for cosine_with_restarts.")
    dataloader_num_workers: int = _flag(
        0, "Accepted for compatibility; images are decoded once and cached, so no workers are needed."
    )
    snr_gamma: float | None = _flag(
        None,
        "Min-SNR loss weighting (Hang et al. 2023; diffusers' text-to-image scripts use the same flag): weight "
        "each sample by min(SNR, gamma)/SNR (epsilon) or /(SNR+1) (v-prediction), so the near-pure-noise "
        "timesteps, where a few images' layout and background dominate the loss, do not drown out their "
        "shape. 5 is the paper's value. Default: off (plain MSE, as diffusers' textual inversion); 0 turns off "
        "a model's recommended value.",
    )
    use_8bit_adam: bool = _flag(
        False, "bitsandbytes' 8-bit AdamW (as diffusers' SDXL script); needs `pip install bitsandbytes`."
    )
    adam_beta1: float = _flag(0.9, "AdamW beta1.")
    adam_beta2: float = _flag(0.999, "AdamW beta2.")
    adam_weight_decay: float = _flag(1e-2, "AdamW weight decay (applied to the new rows only).")
    adam_epsilon: float = _flag(1e-08, "AdamW epsilon.")
    # Hub
    push_to_hub: bool = _flag(False, "Upload the output folder and model card to the Hugging Face Hub.")
    hub_token: str | None = _flag(None, "Hub token (default: your saved login). Never printed or logged.")
    hub_model_id: str | None = _flag(None, "Hub repo id (default: the output folder's name).")
    # Logging and precision
    logging_dir: str = _flag("logs", "Tracker log folder, inside output_dir.")
    mixed_precision: str = _flag(
        "no", "Frozen weights in this precision; the new rows stay fp32.", choices=("no", "fp16", "bf16")
    )
    backend: str = _flag(
        "torch",
        "What runs the training step: 'torch' (PyTorch + Accelerate) or 'jax' (Flax + XLA: TPUs, every local "
        'device, several hosts; pip install -e ".[jax]"). Same flags, same samples, same outputs.',
        choices=("torch", "jax"),
    )
    allow_tf32: bool = _flag(False, "Allow TF32 matmuls on Ampere+ GPUs.")
    report_to: str = _flag("tensorboard", "Tracker for loss, LR and validation images.", choices=REPORT_TO_CHOICES)
    # Validation
    validation_prompt: str | None = _flag(None, "Prompt to sample during training, e.g. 'a <cat-toy> backpack'.")
    num_validation_images: int = _flag(4, "Images per validation.")
    validation_steps: int = _flag(100, "Validate every N steps.")
    validation_epochs: int | None = _flag(None, "Deprecated in diffusers; converted to steps.")
    local_rank: int = _flag(-1, "Set by launchers; accepted for compatibility.")
    # Checkpoints and saving
    checkpointing_steps: int = _flag(500, "Save a resumable checkpoint-N/ every N steps.")
    checkpoints_total_limit: int | None = _flag(None, "Keep at most this many checkpoints (oldest pruned).")
    resume_from_checkpoint: str | None = _flag(
        None, "Resume from checkpoint-N, a path, or 'latest'.", aliases=("--resume",)
    )
    enable_xformers_memory_efficient_attention: bool = _flag(
        False, "Use xFormers attention (PyTorch SDPA is used otherwise)."
    )
    torch_compile: str = _flag(
        "no",
        "torch.compile the frozen UNet ('reduce-overhead' uses CUDA graphs). Pays on GPUs, not on CPUs "
        "(bench/RESULTS.md).",
        choices=("no", "default", "reduce-overhead", "max-autotune"),
    )
    fp8_base: bool = _flag(
        False,
        "Store the frozen weights in fp8, widened a layer at a time: half the weight memory of fp16, learned "
        "against the rounded weights (as kohya-ss' flag). For GPUs; not with --save_as_full_pipeline.",
    )
    cpu_conv: str = _flag(
        "auto",
        "CPU convolution kernels: 'onednn', PyTorch's 'native', or 'auto' (time each shape on each, and on oneDNN's "
        "GEMM, before training and run it on the fastest; in bf16 oneDNN and its GEMM only: 'native' is for fp32; "
        "numbers in bench/RESULTS.md). Same maths, other rounding; no effect on GPUs.",
        choices=("auto", "onednn", "native"),
    )
    cpu_matmul: str = _flag(
        "auto",
        "CPU kernels of the frozen linear layers: PyTorch's 'blas', 'onednn', or 'auto' (time both before training, "
        "keep the faster; bench/RESULTS.md). Same maths, other rounding; no effect on GPUs.",
        choices=("auto", "blas", "onednn"),
    )
    no_safe_serialization: bool = _flag(
        False,
        "Write learned_embeds-steps-N as .bin instead of .safetensors (both finals are always written).",
    )
    save_steps: int = _flag(500, "Write learned_embeds-steps-N every N steps.")
    save_as_full_pipeline: bool = _flag(False, "Also save the whole pipeline with the new token.")

    def validate(self) -> None:
        """Check values that argparse cannot; raise TextinvError naming the flag and the fix."""
        positive = (
            "repeats",
            "num_vectors",
            "resolution",
            "train_batch_size",
            "gradient_accumulation_steps",
            "validation_steps",
            "checkpointing_steps",
            "save_steps",
            "num_validation_images",
            "lr_num_cycles",
        )
        for f in config_fields():
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                # argparse checks the command line; this also covers textinv.json and library callers.
                raise TextinvError(f"--{f.name} must be one of {', '.join(allowed)} (got {getattr(self, f.name)!r})")
        for name in positive:
            if getattr(self, name) < 1:
                raise TextinvError(f"--{name} must be at least 1 (got {getattr(self, name)})")
        if self.max_train_steps < 0 or (self.max_train_steps == 0 and self.num_train_epochs < 1):
            raise TextinvError("--max_train_steps must be positive (or 0 with --num_train_epochs >= 1)")
        if self.learning_rate <= 0:
            raise TextinvError(f"--learning_rate must be positive (got {self.learning_rate})")
        if self.snr_gamma is not None and not self.snr_gamma >= 0:
            raise TextinvError(f"--snr_gamma must be positive, or 0 for plain MSE (got {self.snr_gamma})")
        if self.fp8_base and self.save_as_full_pipeline:
            raise TextinvError(
                "--fp8_base rounds the frozen weights, so --save_as_full_pipeline would save a rounded copy of the "
                "model; drop one of the two (the learned embedding loads into the original model)"
            )
        if not 0.0 <= self.flip_p <= 1.0:
            raise TextinvError(f"--flip_p is a probability: give 0 (never mirror) to 1 (got {self.flip_p})")
        if self.lr_warmup_steps < 0:
            raise TextinvError("--lr_warmup_steps must be 0 or more")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise TextinvError("--checkpoints_total_limit must be at least 1 (or omitted for no limit)")
        if self.report_to == "wandb" and self.hub_token is not None:
            raise TextinvError(
                "--report_to wandb with --hub_token would expose your token in the run's config; "
                "run `huggingface-cli login` instead of passing --hub_token"
            )
        if self.resolution % 8:
            raise TextinvError(f"--resolution must be a multiple of 8 (got {self.resolution})")
        for name in ("placeholder_token", "initializer_token", "train_data_dir"):
            if not getattr(self, name):
                raise TextinvError(f"--{name} is required")
        if self.template_file:
            from textinv.data import load_template_file

            load_template_file(self.template_file)  # a bad file stops the run before the model loads
        if any(ch.isspace() for ch in self.placeholder_token or ""):
            raise TextinvError(
                f"--placeholder_token {self.placeholder_token!r} contains whitespace; use one word like '<my-cat>'"
            )

    def public_dict(self) -> dict[str, Any]:
        """The config for trackers and model cards: secrets removed."""
        data = dataclasses.asdict(self)
        data.pop("hub_token", None)
        return data


def precision_warning(mixed_precision: str, device_type: str) -> str | None:
    """A one-line warning for `--mixed_precision fp16` on a CPU (None when there is nothing to say).

    Why warn, not refuse: it trains, and Accelerate accepts it without a word, but most CPUs have no fast fp16
    arithmetic and fp16's loss scaling exists for GPUs; bf16 keeps fp32's range and is what CPUs accelerate.
    """
    if mixed_precision == "fp16" and device_type == "cpu":
        return (
            "--mixed_precision fp16 on the CPU: most CPUs have no fast fp16 arithmetic (often slower than fp32) "
            "and fp16 needs loss scaling; --mixed_precision bf16 keeps fp32's range and is what CPUs accelerate"
        )
    return None


def settings_from_model(given: dict[str, Any], model_recommended: dict[str, Any] | None) -> dict[str, Any]:
    """The model's recommended settings that fill flags the user did not give (unknown keys dropped)."""
    names = {f.name for f in config_fields()}
    recommended = {k: v for k, v in (model_recommended or {}).items() if k in names and k not in given}
    if given.get("backend", recommended.get("backend")) == "jax":
        from textinv.backends.jax import TORCH_ONLY_SETTINGS

        # A model's kernel and compile advice is for the torch backend; the JAX backend refuses only what the user set.
        recommended = {k: v for k, v in recommended.items() if k not in TORCH_ONLY_SETTINGS}
    return recommended


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def field_type(field: dataclasses.Field) -> type:
    """The value type of a config field (`int` for `int | None`): what the CLI parses and the UI's widget holds."""
    hint = field.type if not isinstance(field.type, str) else eval(field.type, vars(typing), {})  # noqa: S307
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def build_config(given: dict[str, Any], model_recommended: dict[str, Any] | None = None) -> TrainConfig:
    """Merge the user's flags over the model's recommended settings over diffusers' defaults."""
    names = {f.name for f in config_fields()}
    recommended = settings_from_model(given, model_recommended)
    for key in sorted(set(model_recommended or {}) - names):
        log.warning("the model's textinv.json: ignoring unknown train setting %r", key)
    unknown = set(given) - names
    if unknown:
        raise TextinvError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**{**recommended, **given})


def config_for_model(given: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's config as `textinv train` and the web UI build it: the user's flags over the model's recommended
    settings (its textinv.json) over the defaults; and which values the model's file filled."""
    from textinv.models import model_defaults, resolve_model_source

    source = resolve_model_source(given.get("pretrained_model_name_or_path"))
    recommended = model_defaults(source, "train", given.get("learnable_property", TrainConfig.learnable_property))
    return build_config(given, recommended), settings_from_model(given, recommended)
