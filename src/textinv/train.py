"""The textual-inversion recipe: `setup` (model, token, data, optimiser) → `run_steps` (the loop) → `finish` (files).

The method on one page is the test oracle, `_reference_textual_inversion` in tests/e2e/test_train.py: a
straightforward implementation of diffusers' script that this trainer must match step for step. Every frozen
weight stays bitwise unchanged; only the placeholder rows (`tokens.PlaceholderEmbedding`) train. Differences
from diffusers' script, none of which change what is learned: VAE posteriors are computed once per
(image, flip) instead of every step; AdamW sees only the new rows instead of the 49k-row matrix; there is no
per-step restore of the original rows; sampling is counter-based, so runs are resumable bitwise and split over
processes without changing the result.

Two seams keep this file one recipe: the model family (`textinv.families`: which text encoders get rows, how
prompts condition the UNet, which files a concept is) and the backend (`textinv.backends`: the loss, the
backward and the rows' update). Progress goes to subscribers as events (`textinv.progress`).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textinv import backends
from textinv import checkpoint as ckpt
from textinv.backends.pytorch import TorchBackend
from textinv.config import TrainConfig, precision_warning
from textinv.cpu_runtime import configure_cpu_runtime
from textinv.data import (
    SampleStream,
    cache_latent_posteriors,
    flips_drawn,
    load_concept_images,
    tokenize_prompt_table,
    training_prompts,
)
from textinv.errors import TextinvError, TrainingDiverged
from textinv.families import adapter_for, describe_family
from textinv.families.base import FamilyAdapter
from textinv.fp8 import store_in_fp8
from textinv.hub import push_output_dir, write_model_card
from textinv.layout import FINAL_EMBEDDING, step_embedding_path, validation_dir
from textinv.models import ModelSource, load_pipeline, resolve_model_source, shareable_model_name
from textinv.outputs import prepare_output_dir, save_concept, save_step_embeddings
from textinv.progress import (
    CheckpointSaved,
    EmbeddingSaved,
    EventBus,
    RunFinished,
    RunStarted,
    StepDone,
    StopRequest,
    Subscriber,
    ValidationDone,
)
from textinv.reporting import TrackerLog
from textinv.sample import SamplingRecipe, model_recipe
from textinv.speed import apply_speedups, is_sd_sized, limit_heap_fragmentation
from textinv.tokens import bake_placeholder_rows
from textinv.validation import VALIDATION_RECIPE, sample_validation_images

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    final_loss: float
    embedding_path: Path
    losses: list[float]  # per optimisation step of this invocation (after any resume)
    stopped: bool = False  # ended early by a stop request; a checkpoint of the last step was written


@dataclass
class Run:
    """Everything a run holds between `setup` and `finish`."""

    cfg: TrainConfig
    source: ModelSource
    accelerator: object
    pipe: object
    family: FamilyAdapter
    backend: TorchBackend  # or backends.jax.trainer.JaxTrainBackend: the same interface
    stream: SampleStream
    state: ckpt.TrainingState
    total_steps: int
    validation_steps: int
    recipe: SamplingRecipe | None
    events: EventBus
    losses: list[float] = field(default_factory=list)

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def is_main(self) -> bool:
        return self.backend.is_main_process

    @property
    def samples_per_step(self) -> int:
        return self.cfg.train_batch_size * self.backend.num_replicas * self.cfg.gradient_accumulation_steps

    def micro_batches(self) -> list:
        """This process's draws for the next step: `accum` micro-batches, each its slice of the global batch.

        The global batch is `--train_batch_size` per replica: per process (torch) or per device (jax).
        """
        global_batch = self.cfg.train_batch_size * self.backend.num_replicas
        part = self.backend.local_slice(global_batch)
        firsts = (
            self.state.samples_seen + micro * global_batch for micro in range(self.cfg.gradient_accumulation_steps)
        )
        return [self.stream.draw(range(first + part.start, first + part.stop)) for first in firsts]


def train(cfg: TrainConfig, *, subscribers: Sequence[Subscriber] = (), stop: StopRequest | None = None) -> TrainResult:
    """Train `cfg.placeholder_token` on `cfg.train_data_dir`; `stop.request()` ends it at the next step boundary."""
    run = setup(cfg, subscribers)
    stopped = run_steps(run, stop or StopRequest())
    return finish(run, stopped)


def setup(cfg: TrainConfig, subscribers: Sequence[Subscriber] = ()) -> Run:
    """Load the frozen model, add the token, cache the data, build the optimiser, resume if asked."""
    configure_cpu_runtime()  # fixed thread counts (the CLI calls it first, so the wait policy applies too)
    cfg.validate()
    main_host = backends.prepare(cfg)  # a backend's one-line refusals come before anything loads
    output_dir = Path(cfg.output_dir)
    source = resolve_model_source(cfg.pretrained_model_name_or_path)
    # Validation samples as the model recommends (textinv.json), else as diffusers' script: DPM-Solver, 25
    # steps. Read now, so a bad value in that file stops the run before it starts, not at the first sample.
    recipe = model_recipe(source, VALIDATION_RECIPE) if cfg.validation_prompt else None
    resume_from = _find_resume(cfg, output_dir)
    accelerator = _make_accelerator(cfg, output_dir)
    _prepare_output(cfg, accelerator, writes=accelerator.is_main_process and main_host)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)

    # 1. The frozen model, in the training precision, and the family adapter that speaks for it.
    pipe, family, unet = _load_frozen_model(cfg, source, accelerator, weight_dtype)
    # 2. The placeholder token(s): new rows in every text encoder, initialised from the initializer token.
    family.add_placeholder(cfg.placeholder_token, cfg.num_vectors, cfg.initializer_token)
    # 3. Data: images → VAE posteriors, encoded once; prompts tokenized once.
    posteriors, prompt_ids, num_images = _prepare_data(cfg, pipe, family, unet, accelerator.device, weight_dtype)
    # 4. Schedule, optimiser and LR schedule over the new rows only (the backend owns them).
    replicas = backends.num_replicas(cfg, accelerator)
    steps_per_epoch = max(
        1, math.ceil(num_images * cfg.repeats / (cfg.train_batch_size * replicas * cfg.gradient_accumulation_steps))
    )
    total_steps = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch
    validation_steps = cfg.validation_epochs * steps_per_epoch if cfg.validation_epochs else cfg.validation_steps
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    backend = backends.build(cfg, accelerator, family, source, pipe, noise_scheduler, weight_dtype, total_steps)
    backend.set_data(posteriors, prompt_ids)
    # 5. Resume: rows, optimiser, schedule, kernel plan and the sampling counter.
    state = ckpt.TrainingState(
        global_step=0,
        seed=_initial_seed(cfg),
        placeholder_token=cfg.placeholder_token,
        num_vectors=cfg.num_vectors,
        embedding_dims=list(family.dims),
        samples_seen=0,
        base_model=source.path_or_id,
        backend=backend.name,
    )
    if resume_from is not None:
        state, total_steps = _resume(resume_from, state, family, backend, total_steps)
    stream = SampleStream(
        seed=state.seed,
        num_images=num_images,
        repeats=cfg.repeats,
        num_templates=prompt_ids[0].shape[1],
        latent_shape=posteriors.latent_shape,
        num_train_timesteps=noise_scheduler.config.num_train_timesteps,
        flip_p=cfg.flip_p,
    )
    backend.plan_kernels(
        stream.draw(range(cfg.train_batch_size)),
        total_steps - state.global_step,
        state.kernel_plan or None,
        is_sd_sized(unet),
    )
    state.kernel_plan = backend.kernels.to_state()
    run = Run(
        cfg, source, accelerator, pipe, family, backend, stream, state, total_steps, validation_steps, recipe,
        EventBus([TrackerLog(accelerator, cfg.validation_prompt), *subscribers], enabled=backend.is_main_process),
    )  # fmt: skip
    _announce(run, num_images)
    return run


def run_steps(run: Run, stop: StopRequest) -> bool:
    """The loop: draw, forward + backward, update, report, save on schedule. True if stopped early."""
    cfg, state, backend = run.cfg, run.state, run.backend
    while state.global_step < run.total_steps:
        start = time.perf_counter()
        loss = backend.forward_backward(run.micro_batches())
        run.losses.append(loss)
        if not math.isfinite(loss):
            _stop_on_divergence(run)  # before the update, so the rows are still the last good ones
        backend.update()
        state.global_step += 1
        state.samples_seen += run.samples_per_step
        step = state.global_step
        run.events.emit(StepDone(step, run.total_steps, loss, backend.lr, time.perf_counter() - start))
        if run.is_main:
            if step % cfg.save_steps == 0:
                _save_step_embedding(run)
            if step % cfg.checkpointing_steps == 0:
                _save_checkpoint(run)
            if cfg.validation_prompt and step % run.validation_steps == 0:
                _sample_validation(run)
        run.accelerator.wait_for_everyone()
        if _stop_agreed(run, stop) and step < run.total_steps:
            if run.is_main:
                if step % cfg.checkpointing_steps:
                    _save_checkpoint(run)
                if step % cfg.save_steps:
                    _save_step_embedding(run)
            run.accelerator.wait_for_everyone()
            return True
    return False


def finish(run: Run, stopped: bool) -> TrainResult:
    """The final files (embeddings, token and type files, model card; the full pipeline on request), then push."""
    cfg, step = run.cfg, run.state.global_step
    final_loss = run.losses[-1] if run.losses else float("nan")
    if stopped:
        path = step_embedding_path(run.output_dir, step, safe=not cfg.no_safe_serialization)
        run.events.emit(RunFinished(step, path, stopped=True))
        run.accelerator.end_training()
        return TrainResult(run.output_dir, step, final_loss, path, run.losses, stopped=True)
    path = run.output_dir / FINAL_EMBEDDING
    if run.is_main:
        validation_images: list[Path] = []
        if cfg.validation_prompt:
            if not validation_dir(run.output_dir, step).is_dir():
                _sample_validation(run)
            validation_images = sorted(validation_dir(run.output_dir, step).glob("*.png"))
        path = save_concept(
            run.output_dir, cfg.placeholder_token, run.family.rows, cfg.learnable_property, _metadata(run)
        )
        run.events.emit(EmbeddingSaved(step, path))
        if cfg.save_as_full_pipeline:
            for encoder in run.family.text_encoders:
                bake_placeholder_rows(encoder)
            run.pipe.save_pretrained(run.output_dir)
        write_model_card(
            run.output_dir,
            base_model=run.source,
            placeholder_token=cfg.placeholder_token,
            initializer_token=cfg.initializer_token or "",
            learnable_property=cfg.learnable_property,
            num_vectors=cfg.num_vectors,
            steps=step,
            validation_prompt=cfg.validation_prompt,
            validation_images=validation_images,
            repo_id=cfg.hub_model_id if cfg.push_to_hub else None,
            family=run.family.name,
        )
        if cfg.push_to_hub:
            push_output_dir(run.output_dir, repo_id=cfg.hub_model_id, token=cfg.hub_token)
    run.accelerator.wait_for_everyone()
    run.events.emit(RunFinished(step, path, stopped=False))
    run.accelerator.end_training()
    return TrainResult(run.output_dir, step, final_loss, path, run.losses)


# --- set-up --------------------------------------------------------------------------------------------------


def _load_frozen_model(cfg: TrainConfig, source: ModelSource, accelerator, weight_dtype):
    """The pipeline with every weight frozen, the family adapter, and the UNet (with the run's speed options)."""
    device = accelerator.device
    if device.type == "cpu":
        limit_heap_fragmentation()
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # On the CPU a half-precision run loads the file's own dtype (memory-mapped, nothing read yet) and casts it a
    # tensor at a time, giving each fp32 tensor's pages back (`load_pipeline(on_cpu=True)`, `weight_cast`): the
    # same bits as diffusers' cast, without the whole fp32 file resident beside its copy (SD-1.5 bf16: peak 5.5 ->
    # 2.7 GB).
    pipe = load_pipeline(
        source, revision=cfg.revision, variant=cfg.variant, torch_dtype=weight_dtype, on_cpu=device.type == "cpu"
    )
    if cfg.tokenizer_name:
        replace_tokenizers(pipe, cfg.tokenizer_name)
    family = adapter_for(pipe)
    unet = pipe.unet
    for module in (unet, pipe.vae, *family.text_encoders):
        module.requires_grad_(False)
        module.eval()
    _configure_attention_and_memory(cfg, unet, family.text_encoders)
    if cfg.fp8_base:
        if device.type == "cpu":
            log.warning(
                "--fp8_base on CPU widens every weight on every step: it trained SD-1.5 3.7x slower and saved no "
                "memory (bench/RESULTS.md); it pays on GPUs"
            )
        for module in (unet, *family.text_encoders):
            store_in_fp8(module)
    apply_speedups(unet, cfg.torch_compile, lean=is_sd_sized(unet))
    return pipe, family, unet


def _prepare_data(cfg: TrainConfig, pipe, family: FamilyAdapter, unet, device, weight_dtype):
    """Images → VAE posteriors (once per image and flip); prompts → token ids, [1 or images, templates, L] each."""
    images, image_paths = load_concept_images(cfg.train_data_dir)
    family.set_images([image.size for image in images], cfg.resolution, cfg.center_crop)
    for encoder in family.text_encoders:
        encoder.to(device)
    vae = pipe.vae.to(device)
    posteriors = cache_latent_posteriors(
        vae, images, cfg.resolution, cfg.center_crop, device, weight_dtype, flips_drawn(cfg.flip_p)
    )
    if not (cfg.validation_prompt or cfg.save_as_full_pipeline):
        pipe.vae = None  # nothing needs the VAE past this point: give its memory back
    elif device.type == "cuda":
        vae.to("cpu")  # only validation needs it again
    # The UNet goes to the device only now: on a GPU the VAE's encode at full resolution and the UNet are
    # never resident together, so the peak is the larger of the two phases, not their sum.
    unet.to(device)
    # prompts[image][template]: diffusers' templates (one shared row), followed by each image's caption when the
    # images have captions, or --template_file with them.
    table = training_prompts(
        image_paths, family.prompt_string, cfg.learnable_property, cfg.template_file, cfg.ignore_captions
    )
    prompt_ids = tokenize_prompt_table(family.tokenize, table)
    return posteriors, prompt_ids, len(images)


def _resume(path: Path, state: ckpt.TrainingState, family: FamilyAdapter, backend, total_steps: int):
    """Rows, optimiser, schedule and sampling counter from `checkpoint-N/`; the state and the (maybe one longer) run."""
    loaded = ckpt.load_checkpoint(path)
    _check_resume_compatible(loaded.state, state, path)
    with torch.no_grad():
        for rows, saved in zip(family.rows, loaded.rows, strict=True):
            rows.copy_(saved.to(rows.device))
    backend.read_payload(path)
    resumed = loaded.state
    state.seed, state.global_step, state.samples_seen = resumed.seed, resumed.global_step, resumed.samples_seen
    state.kernel_plan = resumed.kernel_plan
    log.info("resumed from %s at step %d", path, state.global_step)
    if state.global_step >= total_steps:
        # diffusers' script checks for the end only after a step, so resuming a checkpoint that already
        # reached --max_train_steps trains one more step; its own tests rely on it, so we match it.
        log.info("checkpoint is at --max_train_steps already; taking one more step, as diffusers does")
        total_steps = state.global_step + 1
    return state, total_steps


def _check_resume_compatible(saved: ckpt.TrainingState, current: ckpt.TrainingState, path: Path) -> None:
    if list(saved.embedding_dims) != list(current.embedding_dims):
        raise TextinvError(
            f"checkpoint {path} was trained on a {describe_family(tuple(saved.embedding_dims))} model "
            f"but this model is {describe_family(tuple(current.embedding_dims))}; resume with the checkpoint's model"
        )
    if saved.backend != current.backend:
        raise TextinvError(
            f"checkpoint {path} was written by the {saved.backend} backend; resume it with --backend {saved.backend}"
        )
    if (saved.placeholder_token, saved.num_vectors) != (current.placeholder_token, current.num_vectors):
        raise TextinvError(
            f"checkpoint {path} trains {saved.placeholder_token!r} with {saved.num_vectors} vector(s), "
            f"not {current.placeholder_token!r} with {current.num_vectors}; "
            "use the same --placeholder_token and --num_vectors"
        )


def _announce(run: Run, num_images: int) -> None:
    cfg = run.cfg
    if not run.is_main:
        return
    run.accelerator.init_trackers("textual_inversion", config=_tracker_config(cfg))
    log.info(
        "training %s (%d vector(s), dim %s) on %d image(s) with the %s backend: %d steps, batch %d x %d %s x %d accum, "
        "lr %g",
        cfg.placeholder_token, cfg.num_vectors, "+".join(map(str, run.family.dims)), num_images, cfg.backend,
        run.total_steps, cfg.train_batch_size, run.backend.num_replicas,
        run.backend.replica_unit, cfg.gradient_accumulation_steps,
        run.backend.learning_rate,
    )  # fmt: skip
    run.events.emit(RunStarted(run.output_dir, run.state.global_step, run.total_steps, cfg.placeholder_token))


def _prepare_output(cfg: TrainConfig, accelerator, writes: bool) -> None:
    """The fp16-on-CPU warning, then the guard against clobbering an earlier run, on the writing process."""
    if writes:
        warning = precision_warning(cfg.mixed_precision, accelerator.device.type)
        if warning:
            log.warning("textinv: warning: %s", warning)
        resuming = cfg.resume_from_checkpoint is not None
        prepare_output_dir(Path(cfg.output_dir), resuming=resuming, overwrite=cfg.overwrite_output_dir)
        ckpt.remove_interrupted_writes(Path(cfg.output_dir))
    accelerator.wait_for_everyone()


def _make_accelerator(cfg: TrainConfig, output_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    report_to = None if cfg.report_to in ("none", "") else cfg.report_to
    if report_to in ("wandb", "comet_ml"):
        import importlib.util

        if importlib.util.find_spec(report_to) is None:
            raise TextinvError(f"--report_to {report_to} needs the {report_to} package; pip install {report_to}")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps one global state per process; a second train() call in the same process
        # (a notebook, the tests) may ask for another precision, so start from a clean state.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / cfg.logging_dir))
    try:
        return Accelerator(
            mixed_precision=cfg.mixed_precision, log_with=report_to, project_config=project, cpu=_launched_on_cpu()
        )
    except (ValueError, RuntimeError) as exc:
        hint = "use --mixed_precision bf16 or no on CPU" if cfg.mixed_precision == "fp16" else "check the flags"
        raise TextinvError(f"cannot set up --mixed_precision {cfg.mixed_precision}: {exc}; {hint}") from exc


def _launched_on_cpu() -> bool:
    """True when the run must use the CPU: asked for, or several processes launched with no GPU.

    Accelerate only picks its gloo CPU backend when told `cpu=True`; without this, processes started by
    `torchrun` or `accelerate launch --multi_gpu` on a CPU-only machine would each train alone.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _configure_attention_and_memory(cfg: TrainConfig, unet, text_encoders) -> None:
    if cfg.enable_xformers_memory_efficient_attention:
        import importlib.util

        if importlib.util.find_spec("xformers") is None:
            raise TextinvError(
                "--enable_xformers_memory_efficient_attention needs xformers; pip install xformers, "
                "or drop the flag (PyTorch SDPA attention is used by default)"
            )
        unet.enable_xformers_memory_efficient_attention()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()  # both libraries only recompute activations in training mode; dropout is 0 in SD's models
        for encoder in text_encoders:
            encoder.gradient_checkpointing_enable()
            encoder.train()


def replace_tokenizers(pipe, name: str) -> None:
    """`--tokenizer_name`: the model's tokenizer replaced, as in diffusers' script; an SDXL model's two from the
    folder's (or hub id's) `tokenizer/` and `tokenizer_2/`, never only the first."""
    from transformers import CLIPTokenizer

    if getattr(pipe, "tokenizer_2", None) is None:
        try:
            pipe.tokenizer = CLIPTokenizer.from_pretrained(name)
        except Exception as exc:
            raise TextinvError(
                f"could not load --tokenizer_name {name!r} ({type(exc).__name__}); check the path"
            ) from exc
        return
    needs = "an SDXL model has two tokenizers; point it at a folder or hub id with tokenizer/ and tokenizer_2/ inside"
    folder = Path(name)
    if folder.is_dir() and not all((folder / sub).is_dir() for sub in ("tokenizer", "tokenizer_2")):
        raise TextinvError(f"--tokenizer_name {name!r}: {needs}")
    try:
        first = CLIPTokenizer.from_pretrained(name, subfolder="tokenizer")
        second = CLIPTokenizer.from_pretrained(name, subfolder="tokenizer_2")
    except Exception as exc:
        raise TextinvError(f"could not load --tokenizer_name {name!r} ({type(exc).__name__}): {needs}") from exc
    pipe.tokenizer, pipe.tokenizer_2 = first, second


def _find_resume(cfg: TrainConfig, output_dir: Path) -> Path | None:
    if not cfg.resume_from_checkpoint:
        return None
    found = ckpt.resolve_resume(output_dir, cfg.resume_from_checkpoint)
    if found is None:
        log.info("no checkpoint in %s yet; starting a new run", output_dir)
    return found


def _initial_seed(cfg: TrainConfig) -> int:
    if cfg.seed is not None:
        return int(cfg.seed)
    from accelerate.utils import broadcast_object_list

    # Every process must draw the same samples: pick the seed once and share it.
    return int(broadcast_object_list([secrets.randbits(62)])[0])


def _tracker_config(cfg: TrainConfig) -> dict:
    # TensorBoard's hparams accept only scalars and strings; secrets were removed by public_dict.
    return {k: v for k, v in cfg.public_dict().items() if isinstance(v, (int, float, str, bool))}


# --- during the loop ----------------------------------------------------------------------------------------


def _save_step_embedding(run: Run) -> None:
    path = save_step_embeddings(
        run.output_dir, run.state.global_step, run.cfg.placeholder_token, run.family.rows,
        safe=not run.cfg.no_safe_serialization,
    )  # fmt: skip
    run.events.emit(EmbeddingSaved(run.state.global_step, path))


def _save_checkpoint(run: Run) -> None:
    path = ckpt.save_checkpoint(
        run.output_dir, run.state, run.family.rows, run.backend.write_payload, run.cfg.checkpoints_total_limit
    )
    run.events.emit(CheckpointSaved(run.state.global_step, path))


def _sample_validation(run: Run) -> None:
    paths = sample_validation_images(
        run.pipe, run.recipe, run.cfg, device=run.accelerator.device, model=run.source,
        output_dir=run.output_dir, step=run.state.global_step, seed=run.state.seed,
    )  # fmt: skip
    run.events.emit(ValidationDone(run.state.global_step, tuple(paths)))


def _stop_agreed(run: Run, stop: StopRequest) -> bool:
    """Whether to stop now; with several processes, the main process's flag decides for all."""
    if run.accelerator.num_processes == 1:
        return stop.requested
    from accelerate.utils import broadcast_object_list

    return bool(broadcast_object_list([stop.requested])[0])


def _stop_on_divergence(run: Run) -> None:
    """Keep the last good embedding beside the checkpoints, then stop with a clear message."""
    step = run.state.global_step
    kept = step_embedding_path(run.output_dir, step, safe=True)
    if run.is_main:
        save_step_embeddings(run.output_dir, step, run.cfg.placeholder_token, run.family.rows, safe=True)
    latest = ckpt.list_checkpoints(run.output_dir)
    where = f"; last checkpoint: {latest[-1].name}" if latest else ""
    raise TrainingDiverged(
        f"loss became NaN/inf at step {step + 1}; kept the last good embedding in {kept.name}{where}; "
        f"lower --learning_rate (now {run.cfg.learning_rate:g}) or use --mixed_precision bf16/no"
    )


def _metadata(run: Run) -> dict[str, str]:
    """What the final .safetensors header says about the concept (tools like `inspect` show it)."""
    cfg = run.cfg
    return {
        "format": "pt",
        "textinv.token": cfg.placeholder_token,
        "textinv.initializer_token": cfg.initializer_token or "",
        "textinv.step": str(run.state.global_step),
        "textinv.base_model": shareable_model_name(run.source),
        "textinv.family": run.family.name,
        "textinv.learnable_property": cfg.learnable_property,
    }
