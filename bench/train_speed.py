"""Steps/s and peak memory of `textinv train` against diffusers' reference textual_inversion.py.

Both trainers run in their own subprocess with identical flags on the same SD-1.5-sized pipeline
(random weights, real SD-1.5 configs, built in code and cached), one after the other, and are timed
the same way: `steptimer.py` logs a time stamp after every optimizer step, and the rate is taken over
the `--steps` steps that follow `--warmup` warm-up steps (so model loading, the posterior cache and
first-call allocations are excluded for both). Peak resident memory is the child's `ru_maxrss` from
`wait4` (the whole run, loading included); on CUDA the peak `torch.cuda.max_memory_allocated`.

The reference script is a file of diffusers' public repository, kept outside this repo: its path comes
from `--reference` or `$TEXTINV_REFERENCE_SCRIPT`; without it the reference column is skipped, with a
message. Its `from torchvision import transforms` is served by `bench/shims/torchvision` (PIL only).

    python bench/train_speed.py                          # CPU, SD-1.5-sized, 256 px, fp32
    python bench/train_speed.py --size tiny --steps 5    # seconds, for developing the bench
    python bench/train_speed.py --device cuda --precision fp16 bf16   # GPU: 512 px by default
    python bench/train_speed.py --rounds 3               # CPU, trainers alternating, medians

A shared VM's speed drifts by 10% and more within minutes, so one trainer after the other can land a
ratio on either side of a target. `--rounds N` runs every trainer N times, reversing the order on
every other round so that neither trainer always goes first, pairs each run with the reference of its
own round, and reports the median over rounds with the lowest and highest round beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TOKENIZER_DIR = REPO / "src" / "textinv" / "toy" / "model" / "tokenizer"
SHIMS = BENCH_DIR / "shims"
STEPTIMER = BENCH_DIR / "steptimer.py"
GIB = 1024**3


# --------------------------------------------------------------------------------------------------
# The model: SD-1.5's configs, random weights.


# The --max_train_steps of benches that stop a trainer after the steps they measure (`run_trainer(stop_after=)`).
LONG_RUN = 1000


def sd15_configs(size: str) -> dict:
    """UNet / VAE / text-encoder / scheduler configs: SD-1.5's own ("sd15"), or a tiny look-alike ("tiny")."""
    if size == "sd15":
        unet = dict(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
            sample_size=64,
        )
        vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512)
        text = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
    elif size == "tiny":
        unet = dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64,
            attention_head_dim=8,
            sample_size=16,
        )
        vae = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=32)
        text = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
    else:
        raise ValueError(f"unknown size {size!r}")
    n_vae = len(vae["block_out_channels"])
    vae.update(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        norm_num_groups=32,
        act_fn="silu",
        scaling_factor=0.18215,
    )
    unet.update(
        in_channels=4,
        out_channels=4,
        act_fn="silu",
        center_input_sample=False,
        downsample_padding=1,
        flip_sin_to_cos=True,
        freq_shift=0,
        mid_block_scale_factor=1,
        norm_eps=1e-5,
        norm_num_groups=32,
    )
    text.update(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768 if size == "sd15" else 64,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    scheduler = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": scheduler}


def build_pipeline(size: str, out_dir: Path, seed: int = 0) -> Path:
    """Save a StableDiffusionPipeline with random weights in diffusers format (once; reused after)."""
    if (out_dir / "model_index.json").is_file():
        return out_dir
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = sd15_configs(size)
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**cfg["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
        unet=UNet2DConditionModel(**cfg["unet"]),
        scheduler=PNDMScheduler(**cfg["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(partial, safe_serialization=True)
    partial.rename(out_dir)  # a killed build never leaves a folder that looks complete
    return out_dir


def write_concept_images(folder: Path, n: int = 4, size: int = 512) -> Path:
    """`n` distinct synthetic RGB images (gradients and a square), the shape of a user's concept folder."""
    import numpy as np
    from PIL import Image

    if folder.is_dir() and len(list(folder.glob("*.png"))) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = rng.uniform(0, 255, 3)
        arr = np.stack([base[c] * (0.5 + 0.5 * (xx if c % 2 else yy)) for c in range(3)], axis=-1)
        lo, hi = int(size * (0.2 + 0.1 * i)), int(size * (0.6 + 0.05 * i))
        arr[lo:hi, lo:hi] = rng.uniform(0, 255, 3)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"concept{i}.png")
    return folder


# --------------------------------------------------------------------------------------------------
# Running and measuring one trainer.


@dataclass
class RunResult:
    """One trainer's measurement: step time stamps and memory peaks."""

    trainer: str
    precision: str
    step_times: list[float] = field(default_factory=list)  # perf_counter after each optimizer step
    step_rss: list[int] = field(default_factory=list)  # RSS bytes after each step
    cuda_peak: int = 0  # bytes, max over steps of torch.cuda.max_memory_allocated
    maxrss: int = 0  # bytes, ru_maxrss of the whole process
    returncode: int = 0
    log_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def kernel_choices(self) -> list[str]:
        """The CPU kernel choices textinv logged (`--cpu_conv` / `--cpu_matmul auto`), one line each."""
        if self.log_path is None or not self.log_path.exists():
            return []
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line.strip() for line in lines if line.startswith(("CPU convolutions", "CPU matrix products"))]


def parse_step_log(text: str) -> tuple[list[float], list[int], int]:
    """`steptimer.py`'s lines → (time stamps, RSS per step, peak CUDA bytes)."""
    times, rss, cuda = [], [], 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        times.append(float(parts[0]))
        rss.append(int(parts[1]))
        cuda = max(cuda, int(parts[2]))
    return times, rss, cuda


def steady_rate(times: list[float], warmup: int, steps: int) -> float:
    """Steps per second over the `steps` steps after the first `warmup` ones.

    `times[i]` is when step i+1 finished, so the window starts at the end of the last warm-up step.
    """
    if warmup < 1:
        raise ValueError("warmup must be at least 1: the window starts at the end of a step")
    if len(times) < warmup + steps:
        raise ValueError(f"only {len(times)} steps logged, need {warmup + steps}")
    span = times[warmup + steps - 1] - times[warmup - 1]
    return steps / span


def trainer_flags(
    model: Path,
    data: Path,
    out: Path,
    *,
    resolution: int,
    steps: int,
    precision: str,
    gradient_checkpointing: bool,
    seed: int,
) -> list[str]:
    """The flags both trainers get (diffusers' names; textinv accepts them all with the same meaning)."""
    # fmt: off
    flags = [
        "--pretrained_model_name_or_path", str(model),
        "--train_data_dir", str(data),
        "--placeholder_token", "<bench-concept>",
        "--initializer_token", "toy",
        "--learnable_property", "object",
        "--resolution", str(resolution),
        "--center_crop",
        "--train_batch_size", "1",
        "--max_train_steps", str(steps),
        "--learning_rate", "5e-4",
        "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0",
        "--seed", str(seed),
        "--mixed_precision", {"fp32": "no"}.get(precision, precision),
        "--checkpointing_steps", "1000000",
        "--save_steps", "1000000",
        "--report_to", "tensorboard",
        "--dataloader_num_workers", "0",
        "--output_dir", str(out),
    ]
    # fmt: on
    if gradient_checkpointing:
        flags.append("--gradient_checkpointing")
    return flags


def run_trainer(
    trainer: str,
    command_tail: list[str],
    flags: list[str],
    work: Path,
    precision: str,
    env_extra: dict[str, str],
    timeout: float,
    stop_after: int | None = None,
) -> RunResult:
    """Run one trainer under steptimer in a fresh process; wait4 gives its peak RSS.

    With `stop_after`, the trainer is stopped once steptimer has logged that many steps and the run counts as
    complete: benches start a long run (textinv plans its CPU kernels only for runs of 20 steps or more, as a
    user's run would be) and measure its first steps.
    """
    proc, step_log, run_log = _launch(trainer, command_tail, flags, work, precision, env_extra)
    enough = (lambda: _logged_steps(step_log) >= stop_after) if stop_after else (lambda: False)
    try:
        _, status, usage = _wait4_with_timeout(proc, timeout, enough)
    except TimeoutError:
        proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
        status = 124 << 8
    except _Enough:
        proc.kill()
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode, status = 0, 0  # stopped on purpose, with every step it was asked for
    return _result(trainer, precision, step_log, run_log, usage, os.waitstatus_to_exitcode(status))


def _launch(
    trainer: str, command_tail: list[str], flags: list[str], work: Path, precision: str, env_extra: dict[str, str],
    pass_fds: tuple[int, ...] = (),
) -> tuple[subprocess.Popen, Path, Path]:  # fmt: skip
    """Start one trainer under steptimer (its command line heading its log); the process and its two logs."""
    work.mkdir(parents=True, exist_ok=True)
    step_log = work / f"{trainer}-{precision}.steps"
    run_log = work / f"{trainer}-{precision}.log"
    step_log.unlink(missing_ok=True)
    env = {**os.environ, **env_extra, "TEXTINV_BENCH_STEP_LOG": str(step_log)}
    cmd = [sys.executable, str(STEPTIMER), *command_tail, *flags]
    with open(run_log, "w", encoding="utf-8") as log:
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, pass_fds=pass_fds)
    return proc, step_log, run_log


def _result(trainer: str, precision: str, step_log: Path, run_log: Path, usage, returncode: int) -> RunResult:
    """A finished run's `RunResult`: its step log, wait4's peak RSS and its exit code."""
    times, rss, cuda = parse_step_log(step_log.read_text() if step_log.exists() else "")
    return RunResult(
        trainer=trainer,
        precision=precision,
        step_times=times,
        step_rss=rss,
        cuda_peak=cuda,
        maxrss=usage.ru_maxrss * 1024,
        returncode=returncode,
        log_path=run_log,
    )


@dataclass
class TrainerJob:
    """One trainer run of a round: what `run_trainer` takes, for the lockstep runner."""

    trainer: str
    command_tail: list[str]
    flags: list[str]
    precision: str
    env_extra: dict[str, str]


@dataclass
class _Turn:
    job: TrainerJob
    proc: subprocess.Popen
    go: int  # write end: one byte lets the trainer run its next step
    done: int  # read end: one byte per finished step, EOF when the trainer exits
    step_log: Path
    run_log: Path
    steps: int = 0
    exited: bool = False


def run_lockstep(jobs: list[TrainerJob], work: Path, timeout: float, steps: int) -> list[RunResult]:
    """Run the trainers side by side, one step at a time each, in turn, so that a VM's drift hits all alike.

    Each trainer is started once the one before it has finished its first step (model loading, the posterior
    cache and textinv's kernel timing run alone), and after every step it waits (asleep, `steptimer.Turns`)
    until the bench gives it the next turn; the order of turns reverses every round. Steps are timed by the
    trainer's own clock less its waiting, so each sees the machine only while it alone runs. After `steps`
    steps each trainer finishes its run alone (final files written) and its peak RSS comes from wait4.
    """
    import select
    import time

    deadline = time.monotonic() + timeout
    turns: list[_Turn] = []

    def wait_for_step(turn: _Turn) -> None:
        while not select.select([turn.done], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{turn.job.trainer} took longer than {timeout:.0f} s")
        if os.read(turn.done, 1):
            turn.steps += 1
        else:
            turn.exited = True

    def take_turn(turn: _Turn) -> None:
        try:
            os.write(turn.go, b".")
        except BrokenPipeError:  # it has exited; wait_for_step reads the end of its pipe
            pass
        wait_for_step(turn)

    try:
        for job in jobs:
            go_read, go_write = os.pipe()
            done_read, done_write = os.pipe()
            env_extra = {**job.env_extra, "TEXTINV_BENCH_TURNS": f"{go_read},{done_write}"}
            proc, step_log, run_log = _launch(
                job.trainer, job.command_tail, job.flags, work, job.precision, env_extra, (go_read, done_write)
            )
            os.close(go_read)
            os.close(done_write)
            turn = _Turn(job, proc, go_write, done_read, step_log, run_log)
            turns.append(turn)
            print(f"train_speed: running {job.trainer} ({job.precision}) in lockstep ...", file=sys.stderr)
            wait_for_step(turn)
        for index in range(steps):
            for turn in turns if index % 2 else turns[::-1]:
                if not turn.exited and turn.steps < steps:
                    take_turn(turn)
        for turn in turns:  # one at a time: the rest of the run (saving) alone
            while not turn.exited:
                take_turn(turn)
    except TimeoutError as error:
        print(f"train_speed: {error}; stopping every trainer", file=sys.stderr)
    results = []
    for turn in turns:
        if not turn.exited:
            turn.proc.kill()  # timed out: a zombie's exit status and usage stay readable either way
        _, status, usage = os.wait4(turn.proc.pid, 0)  # not Popen.wait: wait4 also gives the peak RSS
        turn.proc.returncode = os.waitstatus_to_exitcode(status)
        for fd in (turn.go, turn.done):
            os.close(fd)
        returncode = turn.proc.returncode if turn.exited else 124
        results.append(_result(turn.job.trainer, turn.job.precision, turn.step_log, turn.run_log, usage, returncode))
    return results


class _Enough(Exception):
    """The trainer has logged every step the bench needs."""


def _logged_steps(step_log: Path) -> int:
    """Optimizer steps steptimer has logged so far."""
    try:
        text = step_log.read_text()
    except FileNotFoundError:
        return 0
    return len(parse_step_log(text)[0])


def _wait4_with_timeout(proc: subprocess.Popen, timeout: float, enough=lambda: False):
    """wait4 for `proc`; TimeoutError past `timeout` seconds, StopIteration once `enough()` (process still running)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
            return pid, status, usage
        if enough():
            raise _Enough
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------------
# The table.


def table_rows(results: list[RunResult], warmup: int, steps: int, device: str) -> list[dict]:
    """One row per run: speed, memory, and both as ratios against the reference of the same precision."""
    rows = []
    for r in results:
        row: dict = {"trainer": r.trainer, "precision": r.precision}
        try:
            rate = steady_rate(r.step_times, warmup, steps) if r.ok else None
        except ValueError:
            rate = None
        row["steps_s"] = rate
        row["s_step"] = 1 / rate if rate else None
        row["peak_gb"] = (r.cuda_peak if device == "cuda" else r.maxrss) / GIB if r.ok else None
        row["train_rss_gb"] = max(r.step_rss) / GIB if r.step_rss else None
        row["error"] = None if r.ok else f"exit {r.returncode}, see {r.log_path}"
        rows.append(row)
    for row in rows:
        ref = next((x for x in rows if x["trainer"] == "reference" and x["precision"] == row["precision"]), None)
        row["speedup"] = row["steps_s"] / ref["steps_s"] if ref and ref["steps_s"] and row["steps_s"] else None
        row["mem_ratio"] = row["peak_gb"] / ref["peak_gb"] if ref and ref["peak_gb"] and row["peak_gb"] else None
    return rows


def embedding_drift(runs_dir: Path, results: list[RunResult]) -> str:
    """How far each trainer's learned embedding ended from textinv's of the same precision (same seed, same
    steps), printed under the speed table. textinv run with other flags draws the same noise and timesteps,
    so its distance is rounding (or, for --fp8_base, the rounded weights); the reference draws its own, so
    its distance is a yardstick of run-to-run spread, not an error. Empty when there is nothing to compare."""
    from safetensors.torch import load_file

    learned = {}
    for r in results:
        path = runs_dir / f"{r.trainer}-{r.precision}" / "learned_embeds.safetensors"
        if r.ok and path.is_file():
            learned[r.trainer, r.precision] = next(iter(load_file(str(path)).values())).float()
    lines = []
    for r in results:
        mine, theirs = learned.get((r.trainer, r.precision)), learned.get(("textinv", r.precision))
        if r.trainer == "textinv" or mine is None or theirs is None or mine.shape != theirs.shape:
            continue
        lines.append(
            f"- {r.trainer} ({r.precision}): final embedding max |difference| from textinv's "
            f"{(mine - theirs).abs().max().item():.2e} (norms {mine.norm().item():.3f} / {theirs.norm().item():.3f})"
        )
    return "\n".join(lines)


def combine_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Rows of several rounds (each from `table_rows`) -> one row per trainer and precision.

    Speed is the median over rounds, and so is each ratio, taken round by round (a run against the
    reference that ran next to it), with the lowest and highest round's ratio kept as `speedup_range`.
    Memory is the highest peak of any round. A trainer that failed in any round is reported failed.
    """
    if len(rounds) == 1:
        return rounds[0]
    combined = []
    for row in rounds[0]:
        same = [
            next(r for r in rows if (r["trainer"], r["precision"]) == (row["trainer"], row["precision"]))
            for rows in rounds
        ]
        failed = next((r for r in same if r["error"] or r["steps_s"] is None), None)
        if failed:
            combined.append({**failed, "error": failed["error"] or "no steady rate in one round", "rounds": len(same)})
            continue
        out = {"trainer": row["trainer"], "precision": row["precision"], "rounds": len(same)}
        out["steps_s"] = statistics.median([r["steps_s"] for r in same])
        out["s_step"] = 1 / out["steps_s"]
        out["peak_gb"] = max(r["peak_gb"] for r in same)
        out["train_rss_gb"] = max((r["train_rss_gb"] for r in same if r["train_rss_gb"] is not None), default=None)
        out["error"] = None
        speedups = [r["speedup"] for r in same if r["speedup"] is not None]
        out["speedup"] = statistics.median(speedups) if len(speedups) == len(same) else None
        out["speedup_range"] = (min(speedups), max(speedups)) if out["speedup"] is not None else None
        ratios = [r["mem_ratio"] for r in same if r["mem_ratio"] is not None]
        out["mem_ratio"] = max(ratios) if len(ratios) == len(same) else None
        out["per_round_s_step"] = [r["s_step"] for r in same]
        out["per_round_speedup"] = [r["speedup"] for r in same]
        combined.append(out)
    return combined


def format_table(rows: list[dict], device: str) -> str:
    """A Markdown table (readable as plain text too)."""
    peak = "peak GPU mem GB" if device == "cuda" else "peak RSS GB"

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    lines = [
        f"| trainer | precision | steps/s | s/step | {peak} | RSS in training GB "
        "| speed vs reference | memory vs reference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['trainer']} | {r['precision']} | failed: {r['error']} | | | | | |")
            continue
        spread = r.get("speedup_range")
        spread_text = f" ({spread[0]:.2f}–{spread[1]:.2f})" if spread and r["trainer"] != "reference" else ""
        lines.append(
            f"| {r['trainer']} | {r['precision']} | {f(r['steps_s'], '.3f')} | {f(r['s_step'], '.2f')} | "
            f"{f(r['peak_gb'], '.2f')} | {f(r['train_rss_gb'], '.2f')} | "
            f"{f(r['speedup'], '.2f')}{'×' if r['speedup'] else ''}{spread_text} | "
            f"{f(r['mem_ratio'], '.2f')}{'×' if r['mem_ratio'] else ''} |"
        )
    rounds = max((r.get("rounds", 1) for r in rows), default=1)
    if rounds > 1:
        lines.append(
            f"\nMedians over {rounds} rounds (trainers alternating); in brackets the lowest and highest "
            "round's speed ratio; memory: the highest round."
        )
        for r in rows:
            if r.get("per_round_s_step"):
                times = ", ".join(f"{v:.2f}" for v in r["per_round_s_step"])
                line = f"- {r['trainer']} ({r['precision']}): s/step by round {times}"
                ratios = [v for v in r["per_round_speedup"] if v is not None]
                if ratios and r["trainer"] != "reference":  # no ratios when the reference did not run
                    line += "; vs reference " + ", ".join(f"{v:.2f}×" for v in ratios)
                lines.append(line)
    return "\n".join(lines)


def machine_description(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    desc = f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    if device == "cuda" and torch.cuda.is_available():
        desc = f"{torch.cuda.get_device_name(0)}; " + desc
    return desc


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("sd15", "tiny"), default="sd15", help="model size (default: sd15)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--resolution", type=int, help="default: 256 on CPU, 512 on CUDA, 32 for --size tiny")
    p.add_argument(
        "--precision",
        nargs="+",
        choices=("fp32", "fp16", "bf16"),
        help="one run per precision per trainer (default: fp32 on CPU, fp16 bf16 on CUDA)",
    )
    p.add_argument("--gradient_checkpointing", action="store_true", help="pass it to both trainers")
    p.add_argument("--warmup", type=int, default=3, help="steps not timed (default 3)")
    p.add_argument("--steps", type=int, default=20, help="timed steps after warm-up (default 20)")
    p.add_argument("--trainers", nargs="+", choices=("textinv", "reference"), default=["textinv", "reference"])
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("TEXTINV_BENCH_CACHE", "/tmp/textinv-bench")),
        help="model, images and run folders ($TEXTINV_BENCH_CACHE, default /tmp/textinv-bench)",
    )
    p.add_argument(
        "--reference",
        type=Path,
        default=Path(os.environ["TEXTINV_REFERENCE_SCRIPT"]) if os.environ.get("TEXTINV_REFERENCE_SCRIPT") else None,
        help="diffusers' examples/textual_inversion/textual_inversion.py ($TEXTINV_REFERENCE_SCRIPT)",
    )
    p.add_argument(
        "--textinv-src",
        type=Path,
        default=REPO / "src",
        help="the textinv package's parent folder (default: this checkout's src/); point it at a patched "
        "copy to measure a proposed change",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also run `textinv train` from another source folder (a patched copy), labelled NAME; repeatable",
    )
    p.add_argument(
        "--flags",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also run this checkout's `textinv train` with extra flags, labelled NAME; repeatable "
        "(e.g. compiled='--torch_compile reduce-overhead')",
    )
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both trainers (default: torch's own)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every trainer this many times, the order reversed every other round; report medians",
    )
    p.add_argument(
        "--lockstep",
        action="store_true",
        help="run the trainers side by side, taking turns step by step, so that the machine's drift hits all alike "
        "(see run_lockstep); they must fit in memory together",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds per trainer run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--results",
        type=Path,
        default=BENCH_DIR / "RESULTS.md",
        help="append the table here (default bench/RESULTS.md)",
    )
    p.add_argument("--no-record", action="store_true", help="print only; do not append to --results")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.resolution is None:  # the tiny VAE downsamples 2x, not 8x: 32 px gives a 16x16 latent
        args.resolution = 32 if args.size == "tiny" else 512 if args.device == "cuda" else 256
    args.precision = args.precision or (["fp16", "bf16"] if args.device == "cuda" else ["fp32"])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trainers = list(args.trainers)
    if args.reference is not None:
        args.reference = args.reference.resolve()  # the trainers run with the runs folder as cwd
    if "reference" in trainers and (args.reference is None or not args.reference.is_file()):
        where = args.reference or "$TEXTINV_REFERENCE_SCRIPT (unset)"
        print(
            f"train_speed: skipping the reference column: {where} is not a file. Point "
            "TEXTINV_REFERENCE_SCRIPT at a copy of diffusers' examples/textual_inversion/textual_inversion.py "
            "(kept outside this repository).",
            file=sys.stderr,
        )
        trainers.remove("reference")
    args.cache = args.cache.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"train_speed: building/loading the {args.size} pipeline under {args.cache}", file=sys.stderr)
    model = build_pipeline(args.size, args.cache / f"pipeline-{args.size}")
    data = write_concept_images(args.cache / "concept")
    env_extra: dict[str, str] = {"TQDM_MININTERVAL": "5", "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env_extra["CUDA_VISIBLE_DEVICES"] = ""
    else:  # jax takes 75% of a GPU at start by default: allocate as needed, so the peak column reads its use
        env_extra["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if args.threads:
        env_extra["OMP_NUM_THREADS"] = str(args.threads)
    load_before = load_average()
    rounds: list[list[dict]] = []
    notes: list[str] = []  # what each round's textinv runs chose: the logs themselves are overwritten next round
    all_ok = True
    # The PIL-only shim stands in for torchvision only where it is missing: transformers imports
    # torchvision.io when a real torchvision is installed, and the shim has no such module.
    shim = [] if importlib.util.find_spec("torchvision") else ["--torchvision-shim", str(SHIMS)]
    variants = dict(v.split("=", 1) for v in args.variant)
    flag_variants = {name: shlex.split(extra) for name, extra in (v.split("=", 1) for v in args.flags)}
    trainers[1:1] = [*variants, *flag_variants]  # after textinv, before the reference
    short = short_run_note(args.warmup + args.steps, args.device, trainers)
    if short:
        print(f"train_speed: {short}", file=sys.stderr)
        notes.append(f"- {short}")
    for round_index in range(args.rounds):
        results = _run_round(
            args, trainers[:: -1 if round_index % 2 else 1], model, data, env_extra, shim, variants, flag_variants
        )
        all_ok = all_ok and all(r.ok for r in results)
        notes += [
            f"- round {round_index + 1}, {r.trainer} ({r.precision}): `{c}`"
            for r in results
            for c in r.kernel_choices()
        ]
        rows = table_rows(results, args.warmup, args.steps, args.device)
        if args.rounds > 1:
            print(
                f"train_speed: round {round_index + 1} of {args.rounds}:\n{format_table(rows, args.device)}",
                file=sys.stderr,
            )
        rounds.append(
            sorted(rows, key=lambda row: (args.precision.index(row["precision"]), trainers.index(row["trainer"])))
        )
    rows = combine_rounds(rounds)
    table = format_table(rows, args.device)
    drift = embedding_drift(args.cache / "runs", results)  # the last round's runs: their folders are the ones left
    table += f"\n\n{drift}" if drift else ""
    table += "\n\n" + "\n".join(notes) if notes else ""
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if not args.no_record:
        title = (
            f"train_speed: {args.size}, {args.device}, {args.resolution} px, batch 1, {'/'.join(args.precision)}"
            + (", gradient checkpointing" if args.gradient_checkpointing else "")
        )
        record(args.results, title, speed_details(args, load_before, load_average()), table)
    return 0 if all_ok else 1


def short_run_note(steps: int, device: str, trainers: list[str]) -> str | None:
    """What a textinv row measures when the run is too short for textinv to plan its CPU kernels, else None.

    `textinv train` times its CPU kernels only for runs of `cpu_kernels.AUTO_MIN_STEPS` steps or more (a shorter
    run cannot win the timing back), so a shorter bench run times the default kernels, not what a user's run gets.
    """
    from textinv.cpu_kernels import AUTO_MIN_STEPS

    if device != "cpu" or steps >= AUTO_MIN_STEPS or all(t == "reference" for t in trainers):
        return None
    return (
        f"textinv ran {steps} steps, under the {AUTO_MIN_STEPS} after which a run plans its CPU kernels: its rows "
        f"time the default kernels, not a user's run (--warmup + --steps >= {AUTO_MIN_STEPS} for that)"
    )


def _run_round(args, trainers, model, data, env_extra, shim, variants, flag_variants) -> list[RunResult]:
    """Every trainer once, in the given order (side by side in turns with `--lockstep`), for every precision."""
    results = []
    for precision in args.precision:
        jobs = []
        for trainer in trainers:
            out = args.cache / "runs" / f"{trainer}-{precision}"
            shutil.rmtree(out, ignore_errors=True)
            flags = trainer_flags(
                model,
                data,
                out,
                resolution=args.resolution,
                steps=args.warmup + args.steps,
                precision=precision,
                gradient_checkpointing=args.gradient_checkpointing,
                seed=args.seed,
            )
            flags += flag_variants.get(trainer, [])
            if trainer == "textinv" or trainer in variants or trainer in flag_variants:
                src = variants.get(trainer, args.textinv_src)
                path = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
                tail, extra = ["-m", "textinv", "train"], {"PYTHONPATH": path}
            else:
                tail, extra = [*shim, str(args.reference)], {}
            jobs.append(TrainerJob(trainer, tail, flags, precision, {**env_extra, **extra}))
        if args.lockstep:
            runs = run_lockstep(jobs, args.cache / "runs", args.timeout * len(jobs), args.warmup + args.steps)
        else:
            runs = []
            for job in jobs:
                print(f"train_speed: running {job.trainer} ({precision}) ...", file=sys.stderr)
                runs.append(
                    run_trainer(
                        job.trainer,
                        job.command_tail,
                        job.flags,
                        args.cache / "runs",
                        precision,
                        job.env_extra,
                        args.timeout,
                    )  # fmt: skip
                )
        for result in runs:
            if not result.ok:
                tail_text = result.log_path.read_text(errors="replace")[-3000:] if result.log_path else ""
                print(f"train_speed: {result.trainer} failed (exit {result.returncode}):\n{tail_text}", file=sys.stderr)
        results += runs
    return results


def record(results: Path, title: str, details: str, table: str, script: str = "train_speed.py") -> None:
    """Append a table to RESULTS.md under a dated title, with what it ran on and the command that made it."""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = f"python bench/{script} {' '.join(sys.argv[1:])}".rstrip()
    with open(results, "a", encoding="utf-8") as f:
        f.write(f"\n### {title} — {now}\n\n{details}\nCommand: `{command}`\n\n{table}\n")


def speed_details(args: argparse.Namespace, load_before: str, load_after: str) -> str:
    """The machine, threads, load and step counts of a train_speed-style run."""
    return (
        f"Machine: {machine_description(args.device)}; OMP_NUM_THREADS={args.threads or 'unset'}. "
        f"Load average before/after: {load_before} / {load_after}. "
        f"{args.steps} timed steps after {args.warmup} warm-up steps."
    )


if __name__ == "__main__":
    raise SystemExit(main())
