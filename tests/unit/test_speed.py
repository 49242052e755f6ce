"""The benchmark's measuring helpers (bench/) and the speed-up hook: fast checks, no big model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO

BENCH = REPO / "bench"


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


def test_the_jax_backend_gets_its_own_timed_row(train_speed, tmp_path, capsys):
    """steptimer times `textinv train --backend jax` through the JAX step hook (it has no torch optimizer)."""
    pytest.importorskip("jax", reason='the JAX backend tests need pip install -e ".[jax]"')
    argv = ["--size", "tiny", "--trainers", "textinv", "--flags", "jax=--backend jax", "--warmup", "1", "--steps", "2",
            "--no-record", "--cache", str(tmp_path)]  # fmt: skip
    assert train_speed.main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in out.splitlines()
            if line.startswith("| ")}  # fmt: skip
    assert float(rows["jax"]) > 0 and float(rows["textinv"]) > 0  # steps/s of each
    assert "ran 3 steps" in out and "default kernels" in out  # 1 + 2 steps: too short to plan, and the table says so


def test_a_run_too_short_to_plan_kernels_says_so(train_speed):
    """Under AUTO_MIN_STEPS textinv keeps its default CPU kernels: the table must not pass that off as a user's run."""
    from textinv.cpu_kernels import AUTO_MIN_STEPS

    note = train_speed.short_run_note(AUTO_MIN_STEPS - 1, "cpu", ["textinv", "reference"])
    assert note is not None and f"ran {AUTO_MIN_STEPS - 1} steps" in note and "default kernels" in note
    assert train_speed.short_run_note(AUTO_MIN_STEPS, "cpu", ["textinv", "reference"]) is None
    assert train_speed.short_run_note(3, "cuda", ["textinv"]) is None  # no CPU kernels are planned on a GPU
    assert train_speed.short_run_note(3, "cpu", ["reference"]) is None


def test_run_trainer_stops_a_long_run_after_the_steps_it_needs(train_speed, tmp_path, monkeypatch):
    # A "trainer" that logs a step every 0.05 s for ever, as steptimer would (time stamp, RSS, CUDA bytes).
    trainer = tmp_path / "forever.py"
    trainer.write_text(
        "import os, time\n"
        "log = open(os.environ['TEXTINV_BENCH_STEP_LOG'], 'a', buffering=1)\n"
        "while True:\n    time.sleep(0.05)\n    log.write(f'{time.perf_counter()} 1000 0\\n')\n"
    )
    monkeypatch.setattr(train_speed, "STEPTIMER", trainer)  # run it directly instead of under steptimer
    result = train_speed.run_trainer("fake", [], [], tmp_path / "runs", "fp32", {}, timeout=60, stop_after=5)
    assert result.ok and result.returncode == 0
    assert 5 <= len(result.step_times) < 100  # stopped soon after the 5th step, not at the timeout
    assert result.maxrss > 0


def test_run_trainer_reports_a_timeout_as_a_failure(train_speed, tmp_path, monkeypatch):
    trainer = tmp_path / "silent.py"
    trainer.write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setattr(train_speed, "STEPTIMER", trainer)
    result = train_speed.run_trainer("fake", [], [], tmp_path / "runs", "fp32", {}, timeout=1, stop_after=5)
    assert not result.ok and result.returncode == 124


def test_lockstep_runs_one_trainer_at_a_time_and_times_only_its_own_turns(train_speed, tmp_path):
    # A "trainer" whose every step works 0.1 s (logging its wall-clock interval), then steps a torch optimizer,
    # where steptimer's hook logs the step and waits for the bench's next turn.
    trainer = tmp_path / "worker.py"
    trainer.write_text(
        "import sys, time, torch\n"
        "opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)\n"
        "with open(sys.argv[1], 'a', buffering=1) as spans:\n"
        "    for _ in range(6):\n"
        "        start = time.time(); time.sleep(0.1); spans.write(f'{start} {time.time()}\\n')\n"
        "        opt.step()\n"
    )
    jobs = [
        train_speed.TrainerJob(name, [str(trainer), str(tmp_path / f"{name}.spans")], [], "fp32", {}) for name in "ab"
    ]
    results = train_speed.run_lockstep(jobs, tmp_path / "runs", timeout=120, steps=4)
    assert [r.returncode for r in results] == [0, 0] and all(r.maxrss > 0 for r in results)
    assert [len(r.step_times) for r in results] == [6, 6]  # each ran to its end, the last steps alone
    spans = sorted(
        (float(start), float(end), name)
        for name in "ab"
        for start, end in (line.split() for line in (tmp_path / f"{name}.spans").read_text().splitlines())
    )
    assert all(
        end <= next_start for (_, end, _), (next_start, _, _) in zip(spans, spans[1:], strict=False)
    )  # never side by side
    assert spans[0][2] == "a"  # b started only after a's first step
    for result in results:  # the other trainer's turns are not in a trainer's step times
        steps = [b - a for a, b in zip(result.step_times, result.step_times[1:], strict=False)]
        assert all(0.09 < step < 0.18 for step in steps), steps


def test_rounds_must_be_positive(train_speed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_speed.parse_args(["--rounds", "0"])
    assert exit_info.value.code == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err


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
    it, where glibc would otherwise carve it from the heap; a user's own threshold wins, in either spelling."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def probe(mode: str) -> list[str]:
        cmd = [sys.executable, "-c", _HEAP_PROBE, mode]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert probe("plain") == ["None", "0"]
    assert probe("apply") == ["True", "1"]
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    assert probe("apply")[0] == "False"
    del env["MALLOC_MMAP_THRESHOLD_"]
    env["GLIBC_TUNABLES"] = "glibc.malloc.mmap_threshold=65536"
    assert probe("apply")[0] == "False"
    env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"  # another tunable: the threshold is still textinv's
    assert probe("apply") == ["True", "1"]


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


def test_run_result_lists_the_kernel_choices_textinv_logged(train_speed, tmp_path):
    log = tmp_path / "textinv-fp32.log"
    log.write_text(
        "python -m textinv train ...\n\ntraining <t> ...\n"
        "CPU convolutions, one step's calls: oneDNN 3.1 s, native 1.7 s, per shape 1.5 s; using native\n"
        "textinv:  10%|█ | 2/20\n"
        "CPU matrix products, one step's calls: BLAS 1.1 s, oneDNN 0.9 s; using onednn\n"
    )
    result = train_speed.RunResult("textinv", "fp32", log_path=log)
    assert result.kernel_choices() == [
        "CPU convolutions, one step's calls: oneDNN 3.1 s, native 1.7 s, per shape 1.5 s; using native",
        "CPU matrix products, one step's calls: BLAS 1.1 s, oneDNN 0.9 s; using onednn",
    ]
    assert train_speed.RunResult("reference", "fp32", log_path=tmp_path / "missing.log").kernel_choices() == []


def test_lean_geglu_gives_diffusers_outputs_and_gradients_keeping_only_the_projection():
    """The patched GEGLU's output and input gradient equal diffusers' own to the bit; its backward keeps the
    projection but not gelu(gate); a UNet's GEGLUs are all patched; inference runs through it too."""
    import functools

    from diffusers.models.activations import GEGLU

    from textinv.speed import lean_geglu

    torch.manual_seed(0)
    plain = GEGLU(12, 10).requires_grad_(False)
    lean = GEGLU(12, 10).requires_grad_(False)
    lean.load_state_dict(plain.state_dict())
    assert lean_geglu(torch.nn.Sequential(lean)) == 1
    x0 = torch.randn(2, 5, 12)
    weights = {p.untyped_storage().data_ptr() for p in (*plain.parameters(), *lean.parameters())}
    results, kept = {}, {}
    for name, module in (("plain", plain), ("lean", lean)):
        x = x0.clone().requires_grad_(True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(functools.partial(_keep, saved), lambda t: t):
            out = module(x)
        out.square().sum().backward()
        results[name] = (out.detach(), x.grad)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
        kept[name] = sorted(n for ptr, n in storages.items() if ptr not in weights)
    assert all(torch.equal(a, b) for a, b in zip(results["lean"], results["plain"], strict=True))
    projected, gelu_gate = 2 * 5 * 20 * 4, 2 * 5 * 10 * 4  # bytes
    assert kept["plain"] == sorted([projected, gelu_gate]) and kept["lean"] == [projected]
    with torch.inference_mode():
        assert torch.equal(lean(x0), plain(x0))


def _keep(seen: list, tensor: torch.Tensor) -> torch.Tensor:
    seen.append(tensor)
    return tensor


def test_apply_speedups_patches_every_geglu_of_the_unet_when_lean_and_not_compiled(sd1_model):
    from diffusers import UNet2DConditionModel

    from textinv.speed import apply_speedups

    unet = UNet2DConditionModel.from_pretrained(sd1_model, subfolder="unet")
    count = sum(type(m).__name__ == "GEGLU" for m in unet.modules())

    def patched(model):
        return sum("forward" in m.__dict__ for m in model.modules() if type(m).__name__ == "GEGLU")

    apply_speedups(unet)
    assert count > 0 and patched(unet) == count
    small = UNet2DConditionModel.from_pretrained(sd1_model, subfolder="unet")
    apply_speedups(small, lean=False)  # what training passes for a toy-sized UNet
    assert patched(small) == 0
    compiled = UNet2DConditionModel.from_pretrained(sd1_model, subfolder="unet")
    apply_speedups(compiled, compile_mode="default")  # compiles lazily, at the first call
    assert patched(compiled) == 0  # a compiled graph plans what its backward keeps itself


def test_sdxl_bench_model_is_sdxl_1_0_shaped_and_its_tiny_twin_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # sdxl_speed imports train_speed as the bench folder's module
    sdxl_speed = _load("sdxl_speed")
    cfg = sdxl_speed.sdxl_configs("sdxl")
    widths = cfg["text_encoder"]["hidden_size"], cfg["text_encoder_2"]["hidden_size"]
    assert widths == (768, 1280) and cfg["unet"]["cross_attention_dim"] == sum(widths)
    assert cfg["unet"]["projection_class_embeddings_input_dim"] == 6 * 256 + 1280
    assert cfg["unet"]["transformer_layers_per_block"] == (1, 2, 10)
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_speed.build_sdxl_pipeline("tiny", tmp_path / "xl"))
    image = pipe("a photo", num_inference_steps=1, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_sdxl_bench_runs_flag_variants_and_takes_the_gpu_defaults(tmp_path, monkeypatch, capsys):
    """What a lent GPU runs (issue 20 §6): 1024 px fp16 on CUDA, and textinv with extra flags as its own row."""
    monkeypatch.syspath_prepend(str(BENCH))
    sdxl_speed = _load("sdxl_speed")
    gpu = sdxl_speed.parse_args(["--device", "cuda", "--flags", "compiled=--torch_compile reduce-overhead"])
    assert (gpu.resolution, gpu.precision) == (1024, ["fp16"])
    cpu = sdxl_speed.parse_args([])
    assert (cpu.resolution, cpu.precision) == (256, ["fp32"])
    argv = ["--size", "tiny", "--trainers", "textinv", "--flags", "native=--cpu_conv native", "--warmup", "1",
            "--steps", "1", "--no-record", "--cache", str(tmp_path)]  # fmt: skip
    assert sdxl_speed.main(argv) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[2:] == ["textinv", "native"]  # after the header and its rule
    assert "--cpu_conv native" in (tmp_path / "runs" / "native-fp32.log").read_text()


def test_torchvision_shim_crops_as_torchvision():
    from PIL import Image

    spec = importlib.util.spec_from_file_location("shim_transforms", BENCH / "shims" / "torchvision" / "transforms.py")
    transforms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(transforms)
    img = Image.new("RGB", (40, 30))
    img.putpixel((7, 3), (255, 0, 0))
    assert transforms.CenterCrop(20)(img).size == (20, 20)
    assert transforms.functional.crop(img, 3, 7, 5, 6).getpixel((0, 0)) == (255, 0, 0)
    assert transforms.RandomCrop.get_params(img.resize((32, 32)), (32, 32)) == (0, 0, 32, 32)  # the SDXL script's case
    torch.manual_seed(0)
    top, left, h, w = transforms.RandomCrop.get_params(img, (10, 10))
    assert 0 <= top <= 20 and 0 <= left <= 30 and (h, w) == (10, 10)


@pytest.fixture(scope="module")
def contention():
    sys.path.insert(0, str(BENCH))  # contention.py imports train_speed as its sibling
    try:
        return _load("contention")
    finally:
        sys.path.remove(str(BENCH))


def test_contention_table_gives_slow_down_and_ratios_in_each_setting(contention):
    def row(trainer, contended, s_step):
        return {"trainer": trainer, "contended": contended, "s_step": s_step, "error": None, "competitor_cpu": None}

    def one_round(textinv_solo, textinv_busy, ref_solo, ref_busy):
        return [
            row("textinv", False, textinv_solo),
            row("textinv", True, textinv_busy),
            row("reference", False, ref_solo),
            row("reference", True, ref_busy),
        ]

    rounds = [one_round(2.0, 4.0, 5.0, 20), one_round(3.0, 5.0, 7.0, 30)]
    med = contention.summarise(rounds)
    assert med[("textinv", False)] == 2.5 and med[("reference", True)] == 25
    table = contention.format_table(med, ["textinv", "reference"], "loop")
    # textinv: 2.5 -> 4.5 s/step is a 1.80x slow-down; 6.0/2.5 = 2.40x the reference alone, 25/4.5 = 5.56x contended
    assert "| textinv | 2.50 | 4.50 | 1.80× | 2.40× | 5.56× |" in table
    assert "| reference | 6.00 | 25.00 | 4.17× | 1.00× | 1.00× |" in table


def test_contention_failed_round_is_reported_not_averaged(contention):
    rows = [{"trainer": "textinv", "contended": True, "s_step": None, "error": "exit 1", "competitor_cpu": 1.0}]
    rows.append({"trainer": "textinv", "contended": False, "s_step": 2.0, "error": None, "competitor_cpu": None})
    med = contention.summarise([rows])
    assert med[("textinv", True)] is None
    assert "| textinv | 2.00 | — | — | — | — |" in contention.format_table(med, ["textinv"], "loop")


def test_contention_competitor_uses_a_core_until_stopped(contention):
    import time

    proc = contention.start_competitor("loop")
    time.sleep(1.0)
    cpu = contention.stop_competitor(proc)
    assert 0.3 < cpu < 5 and proc.poll() is not None


def test_steptimer_runs_textinv_under_textinv_own_openmp_settings(tmp_path):
    # The step hook imports torch before the command runs; textinv's libgomp settings must still apply.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env |= {"TEXTINV_BENCH_STEP_LOG": str(tmp_path / "steps.log"), "OMP_DISPLAY_ENV": "VERBOSE"}
    cmd = [sys.executable, str(BENCH / "steptimer.py"), "-m", "textinv", "--help"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "GOMP_SPINCOUNT = '1000'" in done.stderr  # libgomp's own default spins 300000 rounds


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_step_flops_counts_a_training_steps_work_attention_included(tmp_path, monkeypatch, family):
    monkeypatch.syspath_prepend(str(BENCH))  # step_flops imports train_speed / sdxl_speed as the bench's modules
    step_flops = _load("step_flops")
    pipe = step_flops.load_pipeline(family, "tiny", tmp_path)
    kinds = step_flops.step_flops(pipe, 32)
    # every kind of work the step does is seen: the CPU flash-attention kernel through our formulas
    assert kinds["matrix products"] > 0 and kinds["convolutions"] > 0 and kinds["attention"] > 0
    rate, where = step_flops.fastest_product(sizes=(64,), repeats=1)
    assert rate > 0 and "64x64" in where
    table = step_flops.format_table(kinds, rate, where, target=1.0)
    total = sum(kinds.values()) / 1e9
    assert f"| total | {total:.1f} | 100% |" in table and f"{total / rate:.2f} s" in table


def test_jax_conv_bench_times_every_convolution_of_the_unet_both_ways(tmp_path, monkeypatch):
    pytest.importorskip("jax", reason='the JAX backend tests need pip install -e ".[jax]"')
    monkeypatch.syspath_prepend(str(BENCH))  # jax_conv imports train_speed as the bench's module
    jax_conv = _load("jax_conv")
    convs = jax_conv.unet_convolutions("tiny", 32, 1)
    # the tiny UNet (two levels, one resnet each, 4x4 latents): conv_in, conv_out, downsampler, resnets, shortcuts
    assert convs[(1, 4, 4, 4, 32, 3, 1)] == 1  # conv_in: 4 latent channels in
    assert convs[(1, 4, 4, 32, 4, 3, 1)] == 1  # conv_out
    assert convs[(1, 4, 4, 32, 32, 3, 2)] == 1  # the downsampler, stride 2
    assert sum(convs.values()) == 33
    results = tmp_path / "RESULTS.md"
    assert jax_conv.main(["--size", "tiny", "--repeats", "1", "--results", str(results)]) == 0
    recorded = results.read_text()
    assert "jax_conv: tiny UNet, 32 px, batch 1" in recorded and "Command: `python bench/jax_conv.py" in recorded
    assert "| 1×4×4×4 | 32 | 3×3/1 | 1 |" in recorded and "| **all convolutions of a step** | | | 33 |" in recorded


def test_jax_ops_bench_times_every_attention_and_upsampler_of_the_unet_both_ways(tmp_path, monkeypatch):
    pytest.importorskip("jax", reason='the JAX backend tests need pip install -e ".[jax]"')
    monkeypatch.syspath_prepend(str(BENCH))  # jax_ops imports train_speed as the bench's module
    jax_ops = _load("jax_ops")
    calls = jax_ops.unet_calls("tiny", 32, 1)
    # the tiny UNet at 32 px (4x4 latents, 8 heads): self- and cross-attention of its down and up blocks (32
    # channels, 16 tokens) and of its mid block (64 channels, 2x2), and one upsampler, 2x2 -> 4x4 on 64 channels
    assert calls[("attention", 1, 8, 16, 16, 4)] == 3 and calls[("attention", 1, 8, 16, 77, 4)] == 3
    assert calls[("attention", 1, 8, 4, 4, 8)] == 1 and calls[("attention", 1, 8, 4, 77, 8)] == 1
    assert calls[("upsampler", 1, 2, 2, 64)] == 1 and sum(calls.values()) == 9
    results = tmp_path / "RESULTS.md"
    assert jax_ops.main(["--size", "tiny", "--repeats", "1", "--results", str(results)]) == 0
    recorded = results.read_text()
    assert "jax_ops: tiny UNet, 32 px, batch 1" in recorded and "Command: `python bench/jax_ops.py" in recorded
    assert "| upsampler: 1×2×2×64 → 4×4 | 1 |" in recorded and "| **all of a step** | 9 |" in recorded
