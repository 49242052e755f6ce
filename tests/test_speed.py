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
