"""The benchmark's measuring helpers (bench/) and the speed-up hook: fast checks, no big model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_speed():
    return _load("train_speed")


def test_step_log_parsing_skips_partial_lines(train_speed):
    text = "10.0 1000 0\n12.5 2000 7\n15.0 1500 5\n17.5 12"  # last line cut by a kill
    times, rss, cuda = train_speed.parse_step_log(text)
    assert times == [10.0, 12.5, 15.0]
    assert rss == [1000, 2000, 1500]
    assert cuda == 7


def test_steady_rate_excludes_warmup_steps(train_speed):
    # Step 1 (warm-up) ends at t=100 after a slow start; then a step every 2 s.
    times = [100.0, 102.0, 104.0, 106.0, 108.0]
    assert train_speed.steady_rate(times, warmup=1, steps=4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="only 5 steps"):
        train_speed.steady_rate(times, warmup=2, steps=4)


def test_table_gives_ratios_against_the_reference_of_the_same_precision(train_speed):
    def run(trainer, step_s, rss_gb):
        times = [i * step_s for i in range(1, 6)]
        return train_speed.RunResult(
            trainer, "fp32", step_times=times, step_rss=[1], maxrss=int(rss_gb * train_speed.GIB)
        )

    rows = train_speed.table_rows([run("textinv", 2.0, 4.0), run("reference", 5.0, 8.0)], 1, 4, "cpu")
    textinv = rows[0]
    assert textinv["speedup"] == pytest.approx(2.5)
    assert textinv["mem_ratio"] == pytest.approx(0.5)
    table = train_speed.format_table(rows, "cpu")
    assert "| textinv | fp32 | 0.500 | 2.00 | 4.00 |" in table
    assert "2.50×" in table and "0.50×" in table


def test_failed_run_is_reported_not_divided(train_speed):
    failed = train_speed.RunResult("reference", "fp32", returncode=1, log_path=Path("ref.log"))
    ok = train_speed.RunResult("textinv", "fp32", step_times=[1.0, 2.0, 3.0], step_rss=[1], maxrss=1)
    rows = train_speed.table_rows([ok, failed], 1, 2, "cpu")
    assert rows[0]["speedup"] is None
    assert "failed: exit 1, see ref.log" in train_speed.format_table(rows, "cpu")


def _timed(train_speed, trainer, step_s, rss_gb, precision="fp32"):
    times = [i * step_s for i in range(1, 6)]
    return train_speed.RunResult(
        trainer, precision, step_times=times, step_rss=[1], maxrss=int(rss_gb * train_speed.GIB)
    )


def test_rounds_report_the_median_ratio_paired_within_each_round(train_speed):
    # Round 2 ran on a slower VM: both trainers are slower, and its own ratio is what counts.
    round1 = [_timed(train_speed, "textinv", 2.0, 4.0), _timed(train_speed, "reference", 4.2, 8.0)]
    round2 = [_timed(train_speed, "textinv", 3.0, 4.5), _timed(train_speed, "reference", 4.5, 8.0)]
    round3 = [_timed(train_speed, "textinv", 2.5, 4.0), _timed(train_speed, "reference", 5.0, 8.0)]
    rounds = [train_speed.table_rows(r, 1, 4, "cpu") for r in (round1, round2, round3)]
    textinv, reference = train_speed.combine_rounds(rounds)
    assert textinv["speedup"] == pytest.approx(2.0)  # median of 2.1, 1.5 and 2.0 (not their mean)
    assert textinv["speedup_range"] == pytest.approx((1.5, 2.1))
    assert textinv["steps_s"] == pytest.approx(1 / 2.5)  # median speed
    assert textinv["peak_gb"] == pytest.approx(4.5)  # memory: the highest round
    assert textinv["mem_ratio"] == pytest.approx(4.5 / 8.0)
    assert reference["speedup"] == pytest.approx(1.0)
    table = train_speed.format_table([textinv, reference], "cpu")
    assert "2.00× (1.50–2.10)" in table
    assert "Medians over 3 rounds" in table
    assert "- textinv (fp32): s/step by round 2.00, 3.00, 2.50; vs reference 2.10×, 1.50×, 2.00×" in table
    assert "- reference (fp32): s/step by round 4.20, 4.50, 5.00\n" in table + "\n"
    assert train_speed.combine_rounds(rounds[:1]) == rounds[0]


def test_a_trainer_failing_in_any_round_is_reported_failed(train_speed):
    ok = [_timed(train_speed, "textinv", 2.0, 4.0), _timed(train_speed, "reference", 4.0, 8.0)]
    failed = [
        _timed(train_speed, "textinv", 2.0, 4.0),
        train_speed.RunResult("reference", "fp32", returncode=1, log_path=Path("ref.log")),
    ]
    rows = train_speed.combine_rounds([train_speed.table_rows(r, 1, 4, "cpu") for r in (ok, failed)])
    assert rows[1]["error"] == "exit 1, see ref.log"
    assert rows[0]["speedup"] is None
    assert "failed: exit 1, see ref.log" in train_speed.format_table(rows, "cpu")


def test_rounds_without_the_reference_print_no_ratios(train_speed):
    rounds = [train_speed.table_rows([_timed(train_speed, "textinv", s, 4.0)], 1, 4, "cpu") for s in (2.0, 3.0)]
    table = train_speed.format_table(train_speed.combine_rounds(rounds), "cpu")
    assert "- textinv (fp32): s/step by round 2.00, 3.00\n" in table + "\n"
    assert "vs reference" not in table.split("Medians")[1]


def test_rounds_alternate_the_order_of_the_trainers(train_speed, monkeypatch, tmp_path, capsys):
    orders = []

    def fake_round(args, trainers, *rest):
        orders.append(list(trainers))
        speed = {"textinv": 2.0, "reference": 4.0 + len(orders) / 10}
        return [_timed(train_speed, t, speed[t], 1.0) for t in trainers]

    monkeypatch.setattr(train_speed, "build_pipeline", lambda size, out: tmp_path / "model")
    monkeypatch.setattr(train_speed, "write_concept_images", lambda folder: tmp_path / "concept")
    monkeypatch.setattr(train_speed, "_run_round", fake_round)
    reference = tmp_path / "textual_inversion.py"
    reference.write_text("")
    argv = ["--rounds", "3", "--warmup", "1", "--steps", "4", "--no-record", "--cache", str(tmp_path)]
    argv += ["--reference", str(reference)]
    assert train_speed.main(argv) == 0
    assert orders == [["textinv", "reference"], ["reference", "textinv"], ["textinv", "reference"]]
    assert "2.10× (2.05–2.15)" in capsys.readouterr().out


def test_rounds_must_be_positive(train_speed):
    with pytest.raises(SystemExit):
        train_speed.parse_args(["--rounds", "0"])


def test_torchvision_shim_reaches_only_the_timed_script(tmp_path):
    """The reference script gets the shim's RandomHorizontalFlip; library code still sees no torchvision."""
    script = tmp_path / "reference.py"
    script.write_text(
        "import library_probe\n"
        "from torchvision import transforms\n"
        "import torch\n"
        "assert transforms.RandomHorizontalFlip(p=1.0).p == 1.0\n"
        "torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1).step()\n"
    )
    (tmp_path / "library_probe.py").write_text(
        "import importlib.util\nassert importlib.util.find_spec('torchvision') is None\n"
    )
    log = tmp_path / "steps.log"
    env = {**os.environ, "TEXTINV_BENCH_STEP_LOG": str(log)}
    cmd = [sys.executable, str(BENCH / "steptimer.py"), "--torchvision-shim", str(BENCH / "shims"), str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(log.read_text().splitlines()) == 1  # one optimizer step, one time stamp


def test_shim_flip_matches_torchvision_semantics():
    from PIL import Image

    sys.path.insert(0, str(BENCH / "shims"))
    try:
        from torchvision.transforms import RandomHorizontalFlip  # the bench shim
    finally:
        sys.path.remove(str(BENCH / "shims"))
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (255, 0, 0))
    assert RandomHorizontalFlip(p=1.0)(img).getpixel((1, 0)) == (255, 0, 0)
    assert RandomHorizontalFlip(p=0.0)(img).getpixel((0, 0)) == (255, 0, 0)
    torch.manual_seed(0)
    expected = [bool(torch.rand(1) < 0.5) for _ in range(8)]
    torch.manual_seed(0)
    flips = [RandomHorizontalFlip(p=0.5)(img).getpixel((1, 0)) == (255, 0, 0) for _ in range(8)]
    assert flips == expected


def test_torch_compile_flag_compiles_the_unet_and_learns_the_same(sd1_model, concept_dir, tmp_path, monkeypatch):
    """`--torch_compile MODE` hands the UNet's forward to torch.compile with MODE; the embedding is unchanged.

    The compiler backend is swapped for dynamo's "eager" one (the graph is traced, no C++ code is
    generated), so this runs in seconds on CPU; the GPU speed-up itself is measured in bench/RESULTS.md.
    """
    from helpers import learned, run_cli, train_args

    real_compile = torch.compile
    calls = []

    def compile_eagerly(fn, mode=None, **kwargs):
        calls.append((getattr(fn, "__self__", None).__class__.__name__, mode))
        return real_compile(fn, backend="eager")

    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    assert run_cli(train_args(sd1_model, concept_dir, plain)) == 0
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    try:
        assert run_cli(train_args(sd1_model, concept_dir, compiled, "--torch_compile", "reduce-overhead")) == 0
    finally:
        torch._dynamo.reset()
    assert calls == [("UNet2DConditionModel", "reduce-overhead")]
    a, b = learned(plain), learned(compiled)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


class _RecordsKernels(torch.autograd.Function):
    """Identity whose forward and backward note whether oneDNN convolutions were enabled when they ran."""

    seen: list[tuple[str, bool]] = []

    @staticmethod
    def forward(ctx, x):
        _RecordsKernels.seen.append(("forward", torch._C._get_mkldnn_enabled()))
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _RecordsKernels.seen.append(("backward", torch._C._get_mkldnn_enabled()))
        return grad


def test_cpu_conv_kernels_switch_covers_the_backward_and_is_restored():
    from textinv.speed import cpu_conv_kernels

    before = torch._C._get_mkldnn_enabled()
    _RecordsKernels.seen.clear()
    x = torch.ones(3, requires_grad=True)
    with cpu_conv_kernels("native"):
        _RecordsKernels.apply(x).sum().backward()
    assert _RecordsKernels.seen == [("forward", False), ("backward", False)]
    assert torch._C._get_mkldnn_enabled() == before
    with pytest.raises(RuntimeError), cpu_conv_kernels("native"):
        raise RuntimeError("boom")
    assert torch._C._get_mkldnn_enabled() == before
    with cpu_conv_kernels("onednn"):
        assert torch._C._get_mkldnn_enabled() == before


def test_native_and_onednn_convolutions_agree():
    """The two kernel sets compute the same forward and input gradient (only the summation order differs)."""
    from textinv.speed import cpu_conv_kernels

    torch.manual_seed(0)
    weight = torch.randn(64, 32, 3, 3) * 0.05
    x0 = torch.randn(2, 32, 16, 16)
    results = {}
    for kernels in ("onednn", "native"):
        x = x0.clone().requires_grad_(True)
        with cpu_conv_kernels(kernels):
            y = torch.nn.functional.conv2d(x, weight, padding=1)
            (y * y).sum().backward()
        results[kernels] = (y.detach(), x.grad)
    torch.testing.assert_close(results["onednn"][0], results["native"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["onednn"][1], results["native"][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("native_s", "onednn_s", "expected"), [(0.02, 0.05, "native"), (0.05, 0.02, "onednn")])
def test_pick_cpu_conv_keeps_the_faster_kernels(native_s, onednn_s, expected):
    import time

    from textinv.speed import pick_cpu_conv

    calls = []

    def step():  # a "step" whose cost depends on which kernels are switched on
        native = not torch._C._get_mkldnn_enabled()
        calls.append(native)
        time.sleep(native_s if native else onednn_s)

    choice, seconds = pick_cpu_conv(step, repeats=2)
    assert choice == expected
    assert calls == [False, True, False, True]  # interleaved, each set twice
    assert seconds["native"] == pytest.approx(native_s, abs=0.015)
    assert seconds["onednn"] == pytest.approx(onednn_s, abs=0.015)


def test_pick_cpu_conv_keeps_onednn_on_a_near_tie():
    import time

    from textinv.speed import pick_cpu_conv

    def step():
        time.sleep(0.030 if torch._C._get_mkldnn_enabled() else 0.029)

    assert pick_cpu_conv(step)[0] == "onednn"


def test_cpu_conv_auto_times_both_records_the_choice_and_resume_keeps_it(sd1_model, concept_dir, tmp_path, monkeypatch):
    """`--cpu_conv auto` times the first batch with both kernel sets before training, logs the choice, runs
    every training step's forward and backward with it, stores it in checkpoints, and a resumed run reuses it
    without timing again. An explicit `--cpu_conv` is never second-guessed."""
    import json

    from helpers import run_cli, train_args

    import textinv.speed
    import textinv.train

    picks = []

    def pick_native(run_step, repeats=2):
        run_step()  # the probe must be a real forward + backward that leaves no gradient behind
        picks.append("timed")
        return "native", {"onednn": 2.0, "native": 1.0}

    seen = []
    real_loss = textinv.train._diffusion_loss

    def loss_noting_kernels(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        seen.append(("forward", torch._C._get_mkldnn_enabled()))
        loss.register_hook(lambda g: seen.append(("backward", torch._C._get_mkldnn_enabled())))
        return loss

    monkeypatch.setattr(textinv.speed, "AUTO_MIN_STEPS", 2)  # the tiny runs here are shorter than the default
    monkeypatch.setattr(textinv.train, "pick_cpu_conv", pick_native)
    monkeypatch.setattr(textinv.train, "pick_cpu_matmul", lambda run_step: ("blas", {}))  # its own test below
    monkeypatch.setattr(textinv.train, "_diffusion_loss", loss_noting_kernels)
    out = tmp_path / "auto"
    assert run_cli(train_args(sd1_model, concept_dir, out, "--checkpointing_steps", "2", steps=2)) == 0
    assert picks == ["timed"]
    # The probe step (inside the patched picker: kernels as they were), then two training steps on native.
    assert seen[2:] == [("forward", False), ("backward", False)] * 2
    state = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    assert state["cpu_conv"] == "native"

    seen.clear()
    resume = ["--resume_from_checkpoint", "latest", "--checkpointing_steps", "2"]
    assert run_cli(train_args(sd1_model, concept_dir, out, *resume, steps=3)) == 0
    assert picks == ["timed"], "a resumed run must not time again"
    assert seen == [("forward", False), ("backward", False)]

    seen.clear()
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "pinned", "--cpu_conv", "onednn", steps=1)) == 0
    assert picks == ["timed"] and seen == [("forward", True), ("backward", True)]

    seen.clear()  # a run too short to win back the timing keeps oneDNN without timing
    monkeypatch.setattr(textinv.speed, "AUTO_MIN_STEPS", 20)
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "short", steps=1)) == 0
    assert picks == ["timed"] and seen == [("forward", True), ("backward", True)]


def test_onednn_linear_gives_the_blas_results_and_leaves_trainable_layers_alone():
    """`cpu_matmul_kernels("onednn")` computes frozen linear layers' outputs and input gradients as BLAS does
    (summation order aside); a layer whose weight trains keeps PyTorch's own path and gets its gradient."""
    import textinv.speed
    from textinv.speed import cpu_matmul_kernels

    torch.manual_seed(0)
    frozen = torch.nn.Linear(48, 40).requires_grad_(False)
    trainable = torch.nn.Linear(40, 8)
    x0 = torch.randn(2, 7, 48)
    results, used = {}, []
    gemm = textinv.speed._onednn_gemm

    def noting_gemm(x, weight, bias):
        used.append(tuple(weight.shape))
        return gemm(x, weight, bias)

    textinv.speed._onednn_gemm = noting_gemm
    try:
        for kernels in ("blas", "onednn"):
            trainable.zero_grad()
            x = x0.clone().requires_grad_(True)
            with cpu_matmul_kernels(kernels):
                y = trainable(frozen(x))
                (y * y).sum().backward()
            results[kernels] = (y.detach(), x.grad, trainable.weight.grad.clone())
    finally:
        textinv.speed._onednn_gemm = gemm
    assert used == [(40, 48), (48, 40)]  # the frozen layer's forward and its input gradient, nothing else
    textinv.speed._onednn_gemm = noting_gemm
    try:
        with cpu_matmul_kernels("onednn"):  # called with keywords, as some libraries do
            by_keyword = torch.nn.functional.linear(input=x0, weight=frozen.weight, bias=frozen.bias)
    finally:
        textinv.speed._onednn_gemm = gemm
    assert used[2:] == [(40, 48)]
    torch.testing.assert_close(by_keyword, frozen(x0), rtol=1e-5, atol=1e-5)
    for ours, blas in zip(results["onednn"], results["blas"], strict=True):
        torch.testing.assert_close(ours, blas, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("onednn_s", "expected"), [(0.02, "onednn"), (0.027, "onednn"), (0.05, "blas"), (0.0295, "blas")]
)
def test_pick_cpu_matmul_keeps_onednn_only_when_clearly_faster(onednn_s, expected, monkeypatch):
    import time

    import textinv.speed

    layer = torch.nn.Linear(4, 4).requires_grad_(False)
    on_onednn = []
    gemm = textinv.speed._onednn_gemm
    monkeypatch.setattr(textinv.speed, "_onednn_gemm", lambda *a: on_onednn.append(1) or gemm(*a))

    def step():
        before = len(on_onednn)
        layer(torch.ones(1, 4))
        time.sleep(onednn_s if len(on_onednn) > before else 0.030)

    choice, seconds = textinv.speed.pick_cpu_matmul(step)
    assert choice == expected and set(seconds) == {"blas", "onednn"}


def test_pick_cpu_matmul_falls_back_to_blas_when_onednn_cannot_run(monkeypatch, caplog):
    import textinv.speed

    def broken(*_args):
        raise RuntimeError("could not create a primitive\nmore detail")

    monkeypatch.setattr(textinv.speed, "_onednn_gemm", broken)
    layer = torch.nn.Linear(4, 4).requires_grad_(False)
    assert textinv.speed.pick_cpu_matmul(lambda: layer(torch.ones(1, 4))) == ("blas", {})
    assert "could not create a primitive); using BLAS" in caplog.text


def test_cpu_matmul_auto_times_records_the_choice_and_learns_what_blas_learns(
    sd1_model, concept_dir, tmp_path, monkeypatch
):
    """`--cpu_matmul auto` times a real step, trains every step's linear layers on the choice, stores it in
    checkpoints (a resumed run keeps it, untimed); `--cpu_matmul blas` and `onednn` learn the same rows."""
    import json

    from helpers import learned, run_cli, train_args

    import textinv.speed
    import textinv.train

    picks, gemm_calls = [], []
    gemm = textinv.speed._onednn_gemm
    monkeypatch.setattr(textinv.speed, "_onednn_gemm", lambda *a: gemm_calls.append(1) or gemm(*a))

    def pick_onednn(run_step, repeats=2):
        run_step()
        picks.append("timed")
        return "onednn", {"blas": 2.0, "onednn": 1.0}

    monkeypatch.setattr(textinv.speed, "AUTO_MIN_STEPS", 2)
    monkeypatch.setattr(textinv.train, "pick_cpu_conv", lambda run_step: ("onednn", {"onednn": 1.0, "native": 1.0}))
    monkeypatch.setattr(textinv.train, "pick_cpu_matmul", pick_onednn)
    out = tmp_path / "auto"
    assert run_cli(train_args(sd1_model, concept_dir, out, "--checkpointing_steps", "2", steps=2)) == 0
    assert picks == ["timed"] and gemm_calls
    assert json.loads((out / "checkpoint-2" / "training_state.json").read_text())["cpu_matmul"] == "onednn"
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


def test_cpu_conv_is_left_unchosen_off_cpu_so_a_cpu_resume_times_it(monkeypatch):
    """A GPU run records no kernel choice; resuming its checkpoint on a CPU with `auto` then times both sets."""
    from types import SimpleNamespace

    import textinv.speed
    import textinv.train
    from textinv.config import TrainConfig

    timed = []

    def pick(probe):
        timed.append(1)
        return "native", {"onednn": 2.0, "native": 1.0}

    monkeypatch.setattr(textinv.train, "pick_cpu_conv", pick)
    cfg = TrainConfig(cpu_conv="auto")
    gpu = SimpleNamespace(device=torch.device("cuda"))
    assert textinv.train._choose_cpu_conv(cfg, gpu, "", 100, probe=None) == ""
    with textinv.speed.cpu_conv_kernels(""):  # a no-op: oneDNN stays on
        assert torch._C._get_mkldnn_enabled()
    cpu = SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True)
    assert textinv.train._choose_cpu_conv(cfg, cpu, "", 100, probe=None) == "native"
    assert timed == [1]


_HEAP_PROBE = """
import ctypes, sys
from textinv.speed import limit_heap_fragmentation
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]
libc.mallinfo2.restype = Info
def mapped_blocks_for_8mib():
    libc.free(libc.malloc(16 << 20))  # freeing a mapped block raises glibc's dynamic threshold to 16 MiB
    before = libc.mallinfo2().hblks
    block = libc.malloc(8 << 20)
    mapped = libc.mallinfo2().hblks - before
    libc.free(block)
    return mapped
applied = limit_heap_fragmentation() if sys.argv[1] == "apply" else None
print(applied, mapped_blocks_for_8mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's allocator; a no-op elsewhere")
def test_limit_heap_fragmentation_maps_large_blocks_of_their_own():
    """After the call an 8 MiB block gets its own mapping, even once glibc's dynamic threshold has risen past
    it, where glibc would otherwise carve it from the heap; a user's MALLOC_MMAP_THRESHOLD_ wins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def probe(mode: str) -> list[str]:
        cmd = [sys.executable, "-c", _HEAP_PROBE, mode]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert probe("plain") == ["None", "0"]
    assert probe("apply") == ["True", "1"]
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    assert probe("apply")[0] == "False"


def test_embedding_drift_compares_each_trainer_with_textinv_of_the_same_precision(train_speed, tmp_path):
    from safetensors.torch import save_file

    rows = {"textinv-fp16": [1.0, 2.0], "reference-fp16": [1.0, 2.5], "textinv-bf16": [0.0, 0.0]}
    for name, values in rows.items():
        (tmp_path / name).mkdir()
        save_file({"<bench-concept>": torch.tensor([values])}, str(tmp_path / name / "learned_embeds.safetensors"))
    results = [
        train_speed.RunResult("textinv", "fp16"),
        train_speed.RunResult("reference", "fp16"),
        train_speed.RunResult("textinv", "bf16"),
        train_speed.RunResult("reference", "bf16", returncode=1),  # failed: no line
    ]
    text = train_speed.embedding_drift(tmp_path, results)
    assert text.splitlines() == [
        "- reference (fp16): final embedding max |difference| from textinv's 5.00e-01 (norms 2.693 / 2.236)"
    ]


def test_cpu_matmul_onednn_without_onednn_is_a_one_line_error(sd1_model, concept_dir, tmp_path, monkeypatch, capsys):
    from helpers import run_cli, train_args

    import textinv.speed

    monkeypatch.setattr(textinv.speed, "onednn_linear_available", lambda: False)
    assert run_cli(train_args(sd1_model, concept_dir, tmp_path / "o", "--cpu_matmul", "onednn", steps=1)) == 2
    err = capsys.readouterr().err.strip()
    assert "--cpu_matmul onednn" in err and "use --cpu_matmul blas" in err and "\n" not in err, err
