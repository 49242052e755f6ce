"""The textual-inversion training loop, top to bottom: load → tokens → data → optimise → save.

Every frozen weight stays bitwise unchanged; only the placeholder rows (`tokens.PlaceholderEmbedding`)
train. Differences from diffusers' reference script, none of which change what is learned:
VAE posteriors are computed once per (image, flip) instead of every step; AdamW sees only the new rows
instead of the 49k-row matrix; there is no per-step restore of the original rows; sampling is
counter-based, so runs are resumable bitwise and split over processes without changing the result.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from textinv import checkpoint as ckpt
from textinv.config import TrainConfig
from textinv.cpu_kernels import (
    AUTO_MIN_STEPS,
    ConvPlan,
    cpu_conv_kernels,
    cpu_matmul_kernels,
    kernel_name,
    onednn_linear_available,
    pick_cpu_conv,
    pick_cpu_matmul,
    record_kernel_calls,
)
from textinv.data import (
    SampleStream,
    cache_latent_posteriors,
    flips_drawn,
    load_concept_images,
    templates_for,
    tokenize_templates,
)
from textinv.embeddings import describe_family, family_of_dims, save_diffusers_embedding
from textinv.errors import TextinvError, TrainingDiverged
from textinv.fp8 import store_in_fp8
from textinv.hub import push_output_dir, write_model_card
from textinv.models import load_pipeline, resolve_model_source
from textinv.outputs import prepare_output_dir, save_concept, step_embedding_path
from textinv.sample import SamplingRecipe, model_recipe
from textinv.speed import apply_speedups, limit_heap_fragmentation
from textinv.tokens import (
    add_placeholder_tokens,
    bake_placeholder_rows,
    initializer_id,
    install_placeholder_embedding,
    text_embedding_dim,
)

log = logging.getLogger(__name__)

# diffusers' script validates with DPM-Solver at 25 steps; a model's textinv.json may say otherwise.
VALIDATION_RECIPE = SamplingRecipe(num_inference_steps=25, scheduler="dpm")


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    final_loss: float
    embedding_path: Path
    losses: list[float]  # per optimisation step of this invocation (after any resume)


def train(cfg: TrainConfig) -> TrainResult:
    cfg.validate()
    output_dir = Path(cfg.output_dir)
    source = resolve_model_source(cfg.pretrained_model_name_or_path)
    # Validation samples as the model recommends (textinv.json), else as diffusers' script: DPM-Solver, 25
    # steps. Read now, so a bad value in that file stops the run before it starts, not at the first sample.
    recipe = model_recipe(source, VALIDATION_RECIPE) if cfg.validation_prompt else None
    resume_from = _find_resume(cfg, output_dir)
    accelerator = _make_accelerator(cfg, output_dir)
    device, is_main = accelerator.device, accelerator.is_main_process
    if is_main:
        prepare_output_dir(
            output_dir, resuming=cfg.resume_from_checkpoint is not None, overwrite=cfg.overwrite_output_dir
        )
        ckpt.remove_interrupted_writes(output_dir)
    accelerator.wait_for_everyone()
    if device.type == "cpu":
        limit_heap_fragmentation()
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # 1. The frozen model, in the training precision.
    pipe = load_pipeline(source, revision=cfg.revision, variant=cfg.variant, torch_dtype=weight_dtype)
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise TextinvError(
            f"{source.path_or_id} is an SDXL model; textinv trains SD 1.x/2.x embeddings so far "
            "(SDXL embeddings can already be loaded and converted); use an SD 1.x/2.x model"
        )
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    if cfg.tokenizer_name:
        tokenizer = _load_tokenizer(cfg.tokenizer_name)
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    _configure_attention_and_memory(cfg, unet, text_encoder)
    if cfg.fp8_base:
        if device.type == "cpu":
            log.warning(
                "--fp8_base on CPU widens every weight on every step: SD-1.5 trained 3.7x slower and saved no "
                "memory (bench/RESULTS.md); it pays on GPUs"
            )
        store_in_fp8(unet)
        store_in_fp8(text_encoder)
    sd_sized = sum(p.numel() for p in unet.parameters()) >= LEAN_MIN_UNET_PARAMS
    apply_speedups(unet, text_encoder, accelerator.device, cfg.torch_compile, lean=sd_sized)

    # 2. The placeholder token(s): new rows, initialised from the initializer token, the only trainable tensor.
    placeholder = add_placeholder_tokens(tokenizer, cfg.placeholder_token, cfg.num_vectors)
    init_id = initializer_id(tokenizer, cfg.initializer_token)
    new_rows = install_placeholder_embedding(text_encoder, tokenizer, placeholder, init_id)
    pipe.tokenizer = tokenizer  # validation samples through the pipeline, with the new rows
    dim = text_embedding_dim(text_encoder)

    # 3. Data: images → VAE posteriors, encoded once; prompt templates tokenized once.
    images, _ = load_concept_images(cfg.train_data_dir)
    text_encoder.to(device)
    vae.to(device)
    posteriors = cache_latent_posteriors(
        vae, images, cfg.resolution, cfg.center_crop, device, weight_dtype, flips_drawn(cfg.flip_p)
    )
    if not (cfg.validation_prompt or cfg.save_as_full_pipeline):
        pipe.vae = vae = None  # nothing needs the VAE past this point: give its memory back
    elif device.type == "cuda":
        vae.to("cpu")  # only validation needs it again
    # The UNet goes to the device only now: on a GPU the VAE's encode at full resolution and the UNet
    # are never resident together, so the peak is the larger of the two phases, not their sum.
    unet.to(device)
    template_ids = tokenize_templates(tokenizer, templates_for(cfg.learnable_property), placeholder.prompt_string)
    template_ids = template_ids.to(device)

    # 4. Optimiser and LR schedule over the new rows only.
    per_process, n_proc, accum = (
        cfg.train_batch_size,
        accelerator.num_processes,
        cfg.gradient_accumulation_steps,
    )
    global_batch = per_process * n_proc
    steps_per_epoch = max(1, math.ceil(len(images) * cfg.repeats / (global_batch * accum)))
    total_steps = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch
    lr = cfg.learning_rate * (accum * per_process * n_proc if cfg.scale_lr else 1)
    validation_steps = cfg.validation_steps
    if cfg.validation_epochs is not None:
        validation_steps = cfg.validation_epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(
        [new_rows.rows],
        lr=lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=total_steps,
        num_cycles=cfg.lr_num_cycles,
    )
    optimizer = accelerator.prepare(optimizer)  # fp16 loss scaling, device placement of its state

    # 5. Resume: rows, optimiser, schedule and the sampling counter.
    seed, global_step, samples_seen = _initial_seed(cfg, accelerator), 0, 0
    resume_state = None
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from)
        resume_state = state.state
        _check_resume_compatible(state.state, cfg, dim, resume_from)
        with torch.no_grad():
            new_rows.rows.copy_(state.rows.to(device))
        optimizer.load_state_dict(state.optimizer_state)
        lr_scheduler.load_state_dict(state.scheduler_state)
        seed, global_step, samples_seen = state.state.seed, state.state.global_step, state.state.samples_seen
        log.info("resumed from %s at step %d", resume_from, global_step)
        if global_step >= total_steps:
            # diffusers' script checks for the end only after a step, so resuming a checkpoint that already
            # reached --max_train_steps trains one more step; its own tests rely on it, so we match it.
            total_steps = global_step + 1
            log.info("checkpoint is at --max_train_steps already; taking one more step, as diffusers does")
    stream = SampleStream(
        seed=seed,
        num_images=len(images),
        repeats=cfg.repeats,
        num_templates=len(template_ids),
        latent_shape=posteriors.latent_shape,
        num_train_timesteps=noise_scheduler.config.num_train_timesteps,
        flip_p=cfg.flip_p,
    )
    training_state = ckpt.TrainingState(
        global_step=global_step,
        seed=seed,
        placeholder_token=cfg.placeholder_token,
        num_vectors=cfg.num_vectors,
        embedding_dim=dim,
        samples_seen=samples_seen,
        base_model=source.path_or_id,
    )
    if is_main:
        accelerator.init_trackers("textual_inversion", config=_tracker_config(cfg))
        log.info(
            "training %s (%d vector(s), dim %d) on %d image(s): %d steps, batch %d x %d process(es) x %d accum, lr %g",
            cfg.placeholder_token,
            cfg.num_vectors,
            dim,
            len(images),
            total_steps,
            per_process,
            n_proc,
            accum,
            lr,
        )

    def loss_of(draws):
        return _diffusion_loss(
            draws, posteriors, template_ids, text_encoder, unet, noise_scheduler, device, weight_dtype, cfg.snr_gamma
        )

    # CPU kernels (`--cpu_conv`, `--cpu_matmul` auto): timed on the calls one real forward makes, recorded once.
    first_draws = stream.draw(range(per_process))
    kernel_calls = functools.cache(lambda: record_kernel_calls(lambda: loss_of(first_draws)))
    steps_left = total_steps - global_step
    conv_plan = _choose_cpu_conv(cfg, accelerator, resume_state, steps_left, kernel_calls)
    training_state.cpu_conv, training_state.cpu_conv_shapes = conv_plan.kernels, conv_plan.shapes
    training_state.cpu_matmul = matmul_kernels = _choose_cpu_matmul(
        cfg, accelerator, resume_state.cpu_matmul if resume_state else "", steps_left, kernel_calls
    )

    # 6. The loop.
    from tqdm.auto import tqdm

    progress = tqdm(total=total_steps, initial=global_step, desc="textinv", disable=not is_main)
    keep_inputs = _keeps_convolution_inputs(cfg, accelerator.device, sd_sized)
    loss_value, losses = float("nan"), []
    while global_step < total_steps:
        step_start = time.perf_counter()
        step_loss = torch.zeros((), device=device)
        for micro in range(accum):
            first = samples_seen + micro * global_batch + accelerator.process_index * per_process
            draws = stream.draw(range(first, first + per_process))
            with cpu_conv_kernels(conv_plan, keep_inputs=keep_inputs), cpu_matmul_kernels(matmul_kernels):
                loss = loss_of(draws)
                accelerator.backward(loss / accum)
            step_loss += loss.detach() / accum
        step_loss = accelerator.reduce(step_loss, "mean")
        loss_value = float(step_loss)
        losses.append(loss_value)
        if not math.isfinite(loss_value):
            progress.close()
            # Checked before the optimizer step, so the rows are still the last good ones.
            _stop_on_divergence(output_dir, cfg, new_rows.rows, global_step, is_main)
        if n_proc > 1:
            new_rows.rows.grad = accelerator.reduce(new_rows.rows.grad, "mean")
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1
        samples_seen += global_batch * accum
        training_state.global_step, training_state.samples_seen = global_step, samples_seen
        step_time = time.perf_counter() - step_start

        current_lr = lr_scheduler.get_last_lr()[0]
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{current_lr:.2e}")
        accelerator.log({"loss": loss_value, "lr": current_lr, "step_time": step_time}, step=global_step)
        if is_main:
            if global_step % cfg.save_steps == 0:
                path = step_embedding_path(output_dir, global_step, safe=not cfg.no_safe_serialization)
                save_diffusers_embedding(path, cfg.placeholder_token, new_rows.rows)
            if global_step % cfg.checkpointing_steps == 0:
                ckpt.save_checkpoint(
                    output_dir,
                    training_state,
                    new_rows.rows,
                    optimizer,
                    lr_scheduler,
                    cfg.checkpoints_total_limit,
                )
            if cfg.validation_prompt and global_step % validation_steps == 0:
                _validate(cfg, accelerator, pipe, recipe, source, output_dir, global_step, seed)
        accelerator.wait_for_everyone()
    progress.close()

    # 7. Save: embedding files, full pipeline on request, model card, push.
    result_path = output_dir / "learned_embeds.safetensors"
    if is_main:
        validation_images: list[Path] = []
        if cfg.validation_prompt:
            folder = output_dir / "validation" / f"step-{global_step}"
            if not folder.is_dir():
                _validate(cfg, accelerator, pipe, recipe, source, output_dir, global_step, seed)
            validation_images = sorted(folder.glob("*.png"))
        metadata = {
            "format": "pt",
            "textinv.token": cfg.placeholder_token,
            "textinv.initializer_token": cfg.initializer_token or "",
            "textinv.step": str(global_step),
            "textinv.base_model": source.path_or_id,
            "textinv.family": family_of_dims((dim,)),
            "textinv.learnable_property": cfg.learnable_property,
        }
        result_path = save_concept(output_dir, cfg.placeholder_token, new_rows.rows, cfg.learnable_property, metadata)
        if cfg.save_as_full_pipeline:
            bake_placeholder_rows(text_encoder)
            pipe.save_pretrained(output_dir)
        write_model_card(
            output_dir,
            base_model=cfg.pretrained_model_name_or_path or "textinv-toy",
            placeholder_token=cfg.placeholder_token,
            initializer_token=cfg.initializer_token or "",
            learnable_property=cfg.learnable_property,
            num_vectors=cfg.num_vectors,
            steps=global_step,
            validation_prompt=cfg.validation_prompt,
            validation_images=validation_images,
            repo_id=cfg.hub_model_id if cfg.push_to_hub else None,
        )
        if cfg.push_to_hub:
            push_output_dir(output_dir, repo_id=cfg.hub_model_id, token=cfg.hub_token)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(output_dir, global_step, loss_value, result_path, losses)


def _diffusion_loss(
    draws, posteriors, template_ids, text_encoder, unet, noise_scheduler, device, weight_dtype, snr_gamma=None
):
    """MSE between the UNet's prediction and its target (ε, or v for v-prediction), Min-SNR weighted on request."""
    latents = posteriors.sample(draws.image_idx.to(device), draws.flip.to(device), draws.latent_eps.to(device))
    noise = draws.noise.to(device)
    timesteps = draws.timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    cond = text_encoder(template_ids[draws.template_idx.to(device)])[0].to(weight_dtype)
    pred = unet(noisy.to(weight_dtype), timesteps, cond).sample
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise TextinvError(f"unsupported prediction_type {prediction_type!r} in the model's scheduler config")
    if not snr_gamma:  # None or 0: off
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(noise_scheduler, timesteps, snr_gamma, prediction_type)).mean()


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weights: min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR + 1) for v-prediction.

    Written as a clamp so that a zero-terminal-SNR schedule (SNR = 0 at the last timestep) gives the
    limits 1 (ε) and 0 (v) instead of 0/0.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    if prediction_type == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1)
    return torch.clamp(gamma / snr, max=1.0)


def _choose_cpu_conv(cfg: TrainConfig, accelerator, resume_state, steps_left: int, kernel_calls) -> ConvPlan:
    """The CPU convolution kernels for the run: the user's, the resumed run's, or timed (`pick_cpu_conv`)."""
    chosen = resume_state is not None and resume_state.cpu_conv  # "" when the resumed run chose nothing
    resumed = ConvPlan(resume_state.cpu_conv, resume_state.cpu_conv_shapes) if chosen else None
    plan = _choose_cpu_kernels(
        accelerator, cfg.cpu_conv, resumed, steps_left, kernel_calls,
        pick_cpu_conv, default=ConvPlan("onednn"), flag="--cpu_conv", what="convolutions",
    )  # fmt: skip
    plan = ConvPlan(plan) if isinstance(plan, str) else plan
    if not _routes_calls(cfg) and plan.shapes:
        flag = "--torch_compile" if cfg.torch_compile != "no" else "--gradient_checkpointing"
        log.info("CPU convolutions: %s runs all of them on %s", flag, plan.kernels)
        plan = ConvPlan(plan.kernels)
    return plan


def _routes_calls(cfg: TrainConfig) -> bool:
    """Whether the training step may route frozen calls through Python modes: convolutions to `_ConvOn`
    (per-shape kernels, no inputs kept), linear layers to oneDNN's GEMM.

    The routes are a Python mode around each call: a compiled graph does not see it, and gradient
    checkpointing's recomputation in the backward runs outside it, so its saved tensors would not match.
    """
    return cfg.torch_compile == "no" and not cfg.gradient_checkpointing


# The backward keeps less (`lean_geglu`, `_keeps_convolution_inputs`) for UNets of this many parameters and
# more. The toy model (2 M) steps in tens of milliseconds; there the routes' Python calls cost ≈ 10% of a step
# and what they free is a few MB.
LEAN_MIN_UNET_PARAMS = 100_000_000


def _keeps_convolution_inputs(cfg: TrainConfig, device: torch.device, sd_sized: bool) -> bool:
    """Whether the backward keeps the frozen convolutions' inputs, as PyTorch's own convolutions do.

    On the CPU every frozen convolution of an SD-sized UNet is routed through `_ConvOn`, which keeps none
    (70 MB off the SD-1.5 peak RSS at 256 px, at the same speed). Not on GPUs, where a Python route per call
    costs launch time and an H200 run at 512 px showed the same peak memory either way (bench/RESULTS.md).
    """
    return not _routes_calls(cfg) or device.type != "cpu" or not sd_sized


def _choose_cpu_matmul(cfg: TrainConfig, accelerator, resumed: str, steps_left: int, kernel_calls) -> str:
    """The linear layers' CPU kernels, chosen as the convolutions' are (`pick_cpu_matmul`)."""
    on_cpu = accelerator.device.type == "cpu"
    if on_cpu and cfg.cpu_matmul == "onednn" and not onednn_linear_available():
        raise TextinvError("--cpu_matmul onednn: this PyTorch build has no oneDNN; use --cpu_matmul blas or auto")
    if on_cpu and cfg.cpu_matmul == "onednn" and cfg.gradient_checkpointing:
        raise TextinvError(
            "--cpu_matmul onednn does not combine with --gradient_checkpointing (its recomputed forward runs on "
            "PyTorch's own kernels); use --cpu_matmul blas or auto"
        )
    # Half or fp8 weights, or a compiled graph, make no fp32 F.linear calls to send to oneDNN; under gradient
    # checkpointing the oneDNN route (a Python mode, as the convolutions') would not match the recomputation.
    worth_timing = cfg.mixed_precision == "no" and not cfg.fp8_base and _routes_calls(cfg)
    choice = _choose_cpu_kernels(
        accelerator, cfg.cpu_matmul, resumed or None, steps_left, kernel_calls, pick_cpu_matmul,
        default="blas", flag="--cpu_matmul", what="matrix products", worth_timing=worth_timing,
    )  # fmt: skip
    if choice == "onednn" and cfg.gradient_checkpointing:  # resumed from a run without it
        log.info("CPU matrix products: --gradient_checkpointing runs them on BLAS")
        choice = "blas"
    return choice


def _choose_cpu_kernels(
    accelerator,
    given: str,
    resumed,
    steps_left: int,
    kernel_calls,
    pick,
    *,
    default,
    flag: str,
    what: str,
    worth_timing: bool = True,
):
    """One CPU kernel switch's setting: the user's, the resumed run's (None if none), or `pick(kernel_calls())`.

    Only the main process times; every process uses its choice, so they all run the same kernels.
    """
    if accelerator.device.type != "cpu":
        # The switch only concerns CPU kernels. Nothing is chosen, so a checkpoint records no choice and a
        # run that resumes it on a CPU with `auto` times the kernels there.
        return ""
    if given != "auto":
        return given
    if resumed is not None:
        return resumed
    if steps_left < AUTO_MIN_STEPS or not worth_timing:
        return default  # too short to win the timing back, or nothing the switch would change
    choice = [default]
    if accelerator.is_main_process:
        calls = kernel_calls()  # the first call records a forward (and, on a cold start, reads the weights)
        start = time.perf_counter()
        choice[0], seconds = pick(calls)
        if seconds:
            timings = ", ".join(f"{kernel_name(name)} {s:.2f} s" for name, s in seconds.items())
            log.info(
                "CPU %s, one step's calls: %s; using %s (%s sets it; timed in %.0f s)",
                what, timings, choice[0], flag, time.perf_counter() - start,
            )  # fmt: skip
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(choice)
    return choice[0]


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


def _configure_attention_and_memory(cfg: TrainConfig, unet, text_encoder) -> None:
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
        text_encoder.gradient_checkpointing_enable()
        # Both libraries only recompute activations in training mode; dropout is 0 in SD's models.
        unet.train()
        text_encoder.train()


def _load_tokenizer(name: str):
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(name)
    except Exception as exc:
        raise TextinvError(f"could not load --tokenizer_name {name!r} ({type(exc).__name__}); check the path") from exc


def _find_resume(cfg: TrainConfig, output_dir: Path) -> Path | None:
    if not cfg.resume_from_checkpoint:
        return None
    found = ckpt.resolve_resume(output_dir, cfg.resume_from_checkpoint)
    if found is None:
        log.info("no checkpoint in %s yet; starting a new run", output_dir)
    return found


def _initial_seed(cfg: TrainConfig, accelerator) -> int:
    if cfg.seed is not None:
        return int(cfg.seed)
    from accelerate.utils import broadcast_object_list

    # Every process must draw the same samples: pick the seed once and share it.
    return int(broadcast_object_list([secrets.randbits(62)])[0])


def _check_resume_compatible(state: ckpt.TrainingState, cfg: TrainConfig, dim: int, path: Path) -> None:
    if state.embedding_dim != dim:
        raise TextinvError(
            f"checkpoint {path} was trained on a {describe_family((state.embedding_dim,))} model "
            f"but this model is {describe_family((dim,))}; "
            "resume with the checkpoint's model"
        )
    if (state.placeholder_token, state.num_vectors) != (cfg.placeholder_token, cfg.num_vectors):
        raise TextinvError(
            f"checkpoint {path} trains {state.placeholder_token!r} with {state.num_vectors} vector(s), "
            f"not {cfg.placeholder_token!r} with {cfg.num_vectors}; use the same --placeholder_token and --num_vectors"
        )


def _stop_on_divergence(output_dir: Path, cfg: TrainConfig, last_good: torch.Tensor, step: int, is_main: bool):
    """Keep the last good embedding beside the checkpoints, then stop with a clear message."""
    kept = step_embedding_path(output_dir, step, safe=True)
    if is_main:
        save_diffusers_embedding(kept, cfg.placeholder_token, last_good)
    latest = ckpt.list_checkpoints(output_dir)
    where = f"; last checkpoint: {latest[-1].name}" if latest else ""
    raise TrainingDiverged(
        f"loss became NaN/inf at step {step + 1}; kept the last good embedding in {kept.name}{where}; "
        f"lower --learning_rate (now {cfg.learning_rate:g}) or use --mixed_precision bf16/no"
    )


def _tracker_config(cfg: TrainConfig) -> dict:
    # TensorBoard's hparams accept only scalars and strings; secrets were removed by public_dict.
    return {k: v for k, v in cfg.public_dict().items() if isinstance(v, (int, float, str, bool))}


def _validate(cfg, accelerator, pipe, recipe, source, output_dir: Path, step: int, seed: int) -> list[Path]:
    """Generate `num_validation_images` with the current embedding; save PNGs and log them."""
    import numpy as np

    from textinv.sample import generate_images, infotext, save_png, set_scheduler

    recipe = recipe.with_overrides(height=cfg.resolution, width=cfg.resolution)
    sampler = set_scheduler(pipe, recipe.scheduler)
    vae_device = pipe.vae.device
    pipe.vae.to(accelerator.device)
    images = generate_images(
        pipe,
        cfg.validation_prompt,
        num_images=cfg.num_validation_images,
        seed=seed,
        progress=False,
        **recipe.generate_kwargs(),
    )
    pipe.vae.to(vae_device)
    folder = Path(output_dir) / "validation" / f"step-{step}"
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:02d}.png"
        text = infotext(
            cfg.validation_prompt,
            seed=seed + i,
            steps=recipe.num_inference_steps,
            guidance_scale=recipe.guidance_scale,
            width=image.width,
            height=image.height,
            sampler=sampler,
            model=source.path_or_id,
            concepts=[cfg.placeholder_token],
            skip_early_cfg=recipe.skip_early_cfg,
        )
        save_png(path, image, text)
        paths.append(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            stacked = np.stack([np.asarray(im) for im in images])
            tracker.log_images({"validation": stacked}, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(im, caption=cfg.validation_prompt) for im in images]}, step=step)
    return paths
