"""What `--backend jax` refuses before it starts: a missing install, torch-only flags, fp16 (no jax needed)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from textinv.backends import jax as jax_backend
from textinv.config import TrainConfig
from textinv.errors import TextinvError


def _config(**flags) -> TrainConfig:
    return TrainConfig(train_data_dir="d", placeholder_token="<t>", initializer_token="toy", **flags)


def test_missing_jax_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flax" else real(name, *a))
    with pytest.raises(TextinvError) as err:
        jax_backend.require_jax()
    assert str(err.value) == '--backend jax needs flax (not installed); pip install -e ".[jax]"'


def test_the_install_command_in_the_message_is_the_packaged_extra():
    """The hint's extra exists in pyproject.toml (pip would otherwise warn and install nothing)."""
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    extra = re.search(r"^jax = \[(.*)\]$", pyproject, re.MULTILINE).group(1)  # tomllib is Python 3.11+
    assert set(re.findall(r'"([a-z-]+)>=', extra)) >= set(jax_backend.NEEDED)
    assert jax_backend.INSTALL_HINT == 'pip install -e ".[jax]"'


def test_package_imports_without_jax():
    code = "import sys; sys.modules['jax'] = None; import textinv.backends.jax as b; print(b.INSTALL_HINT)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"enable_xformers_memory_efficient_attention": True}, "--enable_xformers_memory_efficient_attention"),
        ({"torch_compile": "default"}, "--torch_compile"),
        ({"fp8_base": True}, "--fp8_base"),
        ({"cpu_conv": "native"}, "--cpu_conv"),
        ({"cpu_matmul": "blas"}, "--cpu_matmul"),
        ({"mixed_precision": "fp16"}, "not fp16"),
    ],
)
def test_flags_the_jax_backend_cannot_honour_are_refused_in_one_line(flags, named):
    with pytest.raises(TextinvError, match=named) as err:
        jax_backend.check_flags(_config(**flags))
    assert "\n" not in str(err.value)


def test_default_flags_pass():
    jax_backend.check_flags(_config(mixed_precision="bf16", gradient_checkpointing=True))


def test_a_models_torch_kernel_advice_does_not_block_the_jax_backend():
    """The toy model recommends --cpu_conv onednn (torch advice): with --backend jax it is not applied."""
    from textinv.config import build_config

    given = {"backend": "jax", "train_data_dir": "d", "placeholder_token": "<t>", "initializer_token": "toy"}
    cfg = build_config(given, {"cpu_conv": "onednn", "cpu_matmul": "blas", "snr_gamma": 5.0})
    jax_backend.check_flags(cfg)
    assert (cfg.cpu_conv, cfg.snr_gamma) == ("auto", 5.0)
    torch_cfg = build_config({**given, "backend": "torch"}, {"cpu_conv": "onednn"})
    assert torch_cfg.cpu_conv == "onednn"
    with pytest.raises(TextinvError, match="--cpu_conv is a torch-backend flag"):
        jax_backend.check_flags(build_config({**given, "cpu_conv": "onednn"}))
