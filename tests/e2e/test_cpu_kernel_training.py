"""CPU kernel plans in real trainings: chosen, entered around every step, stored and resumed; what they learn."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch

from textinv import cpu_kernels, speed
from textinv.cpu_kernels import (
    ConvPlan,
)


def _kernels_seen_by_training(monkeypatch) -> list[tuple[str, bool]]:
    """Note, for every training step's loss, whether oneDNN convolutions were on in its forward and backward."""
    import textinv.backends.pytorch as backend

    seen = []
    real_loss = backend.diffusion_loss

    def loss_noting_kernels(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        seen.append(("forward", torch._C._get_mkldnn_enabled()))
        loss.register_hook(lambda g: seen.append(("backward", torch._C._get_mkldnn_enabled())))
        return loss

    monkeypatch.setattr(backend, "diffusion_loss", loss_noting_kernels)
    return seen


def test_cpu_conv_auto_plans_from_the_steps_calls_records_the_plan_and_resume_keeps_it(
    sd1_model, concept_dir, tmp_path, monkeypatch, caplog
):
    """`--cpu_conv auto` records one real forward's calls, plans from them, runs every training step's forward
    and backward on the plan (listed shapes on their kernels), stores it in checkpoints, and a resumed run
    reuses it without timing again. An explicit `--cpu_conv` is never second-guessed."""
    import json

    from helpers import run_cli, train_args

    picks, routed = [], []
    caplog.set_level(logging.INFO, logger="textinv")

    def pick_planned(calls):
        convs = [c for c in calls if c.op == "conv2d"]
        assert any(c.input_grad for c in convs) and any(c.op == "linear" for c in calls)
        picks.append("timed")
        return ConvPlan("native", {convs[-1].key: "onednn"}), {"onednn": 2.0, "native": 1.0, "per shape": 0.9}

    apply = cpu_kernels._ConvOn.apply
    monkeypatch.setattr(cpu_kernels._ConvOn, "apply", lambda *a: routed.append(a[4:]) or apply(*a))
    seen = _kernels_seen_by_training(monkeypatch)
    monkeypatch.setattr(cpu_kernels, "AUTO_MIN_STEPS", 2)  # the tiny runs here are shorter than the default
    monkeypatch.setattr(speed, "LEAN_MIN_UNET_PARAMS", 0)  # and their UNet far smaller than SD's
    geglu_calls = []
    geglu = speed._GEGLU.apply
    monkeypatch.setattr(speed._GEGLU, "apply", lambda *a: geglu_calls.append(1) or geglu(*a))
    monkeypatch.setattr(cpu_kernels, "pick_cpu_conv", pick_planned)
    monkeypatch.setattr(cpu_kernels, "pick_cpu_matmul", lambda calls: ("blas", {}))  # its own test below
    out = tmp_path / "auto"
    assert run_cli(train_args(sd1_model, concept_dir, out, "--checkpointing_steps", "2", steps=2)) == 0
    assert picks == ["timed"]
    logged = "convolutions, one step's calls: oneDNN 2.00 s, native 1.00 s, per shape 0.90 s; using native; oneDNN"
    assert logged + " for 1 shape(s)" in caplog.text
    assert seen[0] == ("forward", True)  # the recorded forward (never backward), then the training steps:
    assert seen[1:] == [("forward", False), ("backward", False)] * 2
    # every convolution routed: the listed shape on oneDNN, the rest native
    assert set(routed) == {("onednn", "onednn"), ("native", "native")}
    assert geglu_calls  # an SD-sized UNet's GEGLUs keep less too
    state = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    plan = state["kernel_plan"]
    assert plan["cpu_conv"] == "native" and list(plan["cpu_conv_shapes"].values()) == ["onednn"]

    seen.clear(), routed.clear()
    resume = ["--resume_from_checkpoint", "latest", "--checkpointing_steps", "2"]
    assert run_cli(train_args(sd1_model, concept_dir, out, *resume, steps=3)) == 0
    assert picks == ["timed"], "a resumed run must not time again"
    assert seen == [("forward", False), ("backward", False)]
    assert set(routed) == {("onednn", "onednn"), ("native", "native")}

    seen.clear(), routed.clear()
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "pinned", "--cpu_conv", "onednn", steps=1)) == 0
    assert picks == ["timed"] and seen == [("forward", True), ("backward", True)]
    assert set(routed) == {("onednn", "onednn")}

    seen.clear()  # a run too short to win back the timing keeps oneDNN without timing
    monkeypatch.setattr(cpu_kernels, "AUTO_MIN_STEPS", 20)
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "short", steps=1)) == 0
    assert picks == ["timed"] and seen == [("forward", True), ("backward", True)]


def _counted(counts: Counter, name: str, func):
    def run(*args):
        counts[name] += 1
        return func(*args)

    return run


@pytest.mark.parametrize("moved_to", ["onednn", "gemm", "onednn/gemm"])
def test_cpu_conv_plan_learns_what_native_learns(sd1_model, concept_dir, tmp_path, monkeypatch, moved_to):
    """Three steps with every convolution shape moved to other kernels learn the rows all-native learns."""
    from helpers import learned, run_cli, train_args

    def pick_all_moved(calls):
        return ConvPlan("native", {c.key: moved_to for c in calls if c.op == "conv2d"}), {}

    ran = Counter()
    for name in ("_gemm_conv", "_gemm_conv_input_grad"):
        monkeypatch.setattr(cpu_kernels, name, _counted(ran, name, getattr(cpu_kernels, name)))
    monkeypatch.setattr(cpu_kernels, "AUTO_MIN_STEPS", 2)
    monkeypatch.setattr(cpu_kernels, "pick_cpu_conv", pick_all_moved)
    rows = {}
    for name, flags in (("planned", ["--cpu_matmul", "blas"]), ("native", ["--cpu_conv", "native"])):
        assert run_cli(train_args(sd1_model, concept_dir, tmp_path / name, *flags, steps=3)) == 0
        rows[name] = learned(tmp_path / name)["<cat-toy>"]
    torch.testing.assert_close(rows["planned"], rows["native"], rtol=1e-4, atol=1e-5)
    assert bool(ran["_gemm_conv"]) == moved_to.startswith("gemm")
    assert bool(ran["_gemm_conv_input_grad"]) == moved_to.endswith("gemm")


def test_bf16_training_plans_its_convolutions_and_learns_what_onednn_learns(
    sd1_model, concept_dir, tmp_path, monkeypatch
):
    """`--mixed_precision bf16` on a CPU: `--cpu_conv auto` plans the bf16 convolutions (oneDNN's bf16 kernels are
    slow on small deep maps, where the GEMM set runs them 2-4x faster), stores the plan by bf16 shape in the
    checkpoint, and learns what all-oneDNN learns: the same loss curve to bf16 rounding. (Rows are not compared:
    AdamW's first steps move each element by about the learning rate in its gradient's sign, which bf16
    rounding flips for the elements whose gradient is near zero.)"""
    import json

    from textinv.config import build_config
    from textinv.train import train

    seen_dtypes = []

    def pick_all_gemm(calls):
        convs = [c for c in calls if c.op == "conv2d"]
        seen_dtypes.extend(c.dtype for c in convs)
        return ConvPlan("onednn", {c.key: "gemm" for c in convs}), {}

    ran = Counter()
    for name in ("_gemm_conv", "_gemm_conv_input_grad"):
        monkeypatch.setattr(cpu_kernels, name, _counted(ran, name, getattr(cpu_kernels, name)))
    monkeypatch.setattr(cpu_kernels, "AUTO_MIN_STEPS", 2)
    monkeypatch.setattr(cpu_kernels, "pick_cpu_conv", pick_all_gemm)
    given = dict(
        pretrained_model_name_or_path=str(sd1_model), train_data_dir=str(concept_dir), placeholder_token="<cat-toy>",
        initializer_token="toy", resolution=32, train_batch_size=2, max_train_steps=4, learning_rate=5e-3,
        lr_warmup_steps=0, seed=0, report_to="none", mixed_precision="bf16", checkpointing_steps=4,
    )  # fmt: skip
    planned = train(build_config({**given, "output_dir": str(tmp_path / "planned")}))
    assert seen_dtypes and set(seen_dtypes) == {"bfloat16"}
    assert ran["_gemm_conv"] and ran["_gemm_conv_input_grad"]
    ran.clear()
    onednn = train(build_config({**given, "cpu_conv": "onednn", "output_dir": str(tmp_path / "onednn")}))
    assert not ran  # --cpu_conv onednn: no GEMM convolutions
    state = json.loads((tmp_path / "planned" / "checkpoint-4" / "training_state.json").read_text())
    shapes = state["kernel_plan"]["cpu_conv_shapes"]
    assert shapes and all(key.endswith(" bfloat16") and k == "gemm" for key, k in shapes.items())
    assert planned.losses == pytest.approx(onednn.losses, rel=2e-3)
    assert planned.losses != onednn.losses  # other kernels really ran


def test_cpu_matmul_auto_times_records_the_choice_and_learns_what_blas_learns(
    sd1_model, concept_dir, tmp_path, monkeypatch
):
    """`--cpu_matmul auto` picks from the step's calls, trains every step's linear layers on the choice, stores it
    in checkpoints (a resumed run keeps it, untimed); `--cpu_matmul blas` and `onednn` learn the same rows."""
    import json

    from helpers import learned, run_cli, train_args

    picks, gemm_calls = [], []
    gemm = cpu_kernels._onednn_gemm
    monkeypatch.setattr(cpu_kernels, "_onednn_gemm", lambda *a: gemm_calls.append(1) or gemm(*a))

    def pick_onednn(calls):
        assert any(c.op == "linear" and c.input_grad for c in calls)
        picks.append("timed")
        return "onednn", {"blas": 2.0, "onednn": 1.0}

    monkeypatch.setattr(cpu_kernels, "AUTO_MIN_STEPS", 2)
    monkeypatch.setattr(cpu_kernels, "pick_cpu_conv", lambda calls: (ConvPlan("onednn"), {}))
    monkeypatch.setattr(cpu_kernels, "pick_cpu_matmul", pick_onednn)
    out = tmp_path / "auto"
    assert run_cli(train_args(sd1_model, concept_dir, out, "--checkpointing_steps", "2", steps=2)) == 0
    assert picks == ["timed"] and gemm_calls
    state = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    assert state["kernel_plan"]["cpu_matmul"] == "onednn"
    gemm_calls.clear()
    resume = ["--resume_from_checkpoint", "latest", "--checkpointing_steps", "2"]
    assert run_cli(train_args(sd1_model, concept_dir, out, *resume, steps=3)) == 0
    assert picks == ["timed"] and gemm_calls, "a resumed run keeps oneDNN without timing again"

    rows = {}
    for kernels in ("blas", "onednn"):
        gemm_calls.clear()
        run = tmp_path / kernels
        assert run_cli(train_args(sd1_model, concept_dir, run, "--cpu_matmul", kernels, steps=3)) == 0
        assert bool(gemm_calls) == (kernels == "onednn")
        rows[kernels] = learned(run)["<cat-toy>"]
    torch.testing.assert_close(rows["onednn"], rows["blas"], rtol=1e-4, atol=1e-5)
    assert picks == ["timed"]  # explicit choices are never timed


def test_gradient_checkpointing_trains_on_the_main_kernels_without_routes(
    sd1_model, concept_dir, tmp_path, monkeypatch, capsys
):
    """Checkpointing recomputes the forward outside the routing modes, so an `auto` run with it drops the plan's
    shapes, keeps the inputs, leaves the GEMM on BLAS (untimed) and trains; a resumed oneDNN GEMM falls back to
    BLAS; `--cpu_matmul onednn` with it is a one-line error."""
    import json
    from types import SimpleNamespace

    from helpers import run_cli, train_args

    from textinv.checkpoint import TrainingState
    from textinv.config import TrainConfig

    routed, matmul_picks = [], []
    apply = cpu_kernels._ConvOn.apply
    monkeypatch.setattr(cpu_kernels._ConvOn, "apply", lambda *a: routed.append(a[4:]) or apply(*a))
    monkeypatch.setattr(cpu_kernels, "AUTO_MIN_STEPS", 2)
    monkeypatch.setattr(speed, "LEAN_MIN_UNET_PARAMS", 0)
    monkeypatch.setattr(
        cpu_kernels, "pick_cpu_conv", lambda calls: (ConvPlan("native", {c.key: "onednn" for c in calls}), {})
    )
    monkeypatch.setattr(cpu_kernels, "pick_cpu_matmul", lambda calls: matmul_picks.append(1) or ("onednn", {}))
    out = tmp_path / "checkpointed"
    flags = ("--gradient_checkpointing", "--checkpointing_steps", "2")
    assert run_cli(train_args(sd1_model, concept_dir, out, *flags, steps=2)) == 0
    assert not routed and not matmul_picks
    state = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    plan = state["kernel_plan"]
    assert (plan["cpu_conv"], plan["cpu_conv_shapes"], plan["cpu_matmul"]) == ("native", {}, "blas")

    cpu = SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True)
    resumed = TrainingState(0, 0, "<t>", 1, [8], 0, "m", kernel_plan={"cpu_matmul": "onednn"})
    cfg = TrainConfig(gradient_checkpointing=True)
    matmul = cpu_kernels.KernelPlan.from_state(resumed.kernel_plan).matmul
    assert cpu_kernels._choose_cpu_matmul(cfg, cpu, matmul, 100, lambda: None) == "blas"

    capsys.readouterr()
    flags = ("--gradient_checkpointing", "--cpu_matmul", "onednn")
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "explicit", *flags, steps=1)) == 2
    err = capsys.readouterr().err.strip()
    assert "--cpu_matmul onednn does not combine with --gradient_checkpointing" in err and "\n" not in err


def test_cpu_matmul_onednn_without_onednn_is_a_one_line_error(sd1_model, concept_dir, tmp_path, monkeypatch, capsys):
    from helpers import run_cli, train_args

    monkeypatch.setattr(cpu_kernels, "onednn_linear_available", lambda: False)
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "o", "--cpu_matmul", "onednn", steps=1)) == 2
    err = capsys.readouterr().err.strip()
    assert "--cpu_matmul onednn" in err and "use --cpu_matmul blas" in err and "\n" not in err, err
