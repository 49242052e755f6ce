"""The JAX train step against the torch path: optimizer and LR schedules, loss and learned rows, devices, resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason='the JAX backend tests need pip install -e ".[jax]"')
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from conftest import write_concept_images  # noqa: E402
from helpers_jax import (  # noqa: E402
    SD1_RUN,
    make_backend,
    moved_fraction,
    sd1_optimizer,
    shared_setup,
    train_jax,
    train_torch,
)

from textinv.backends.jax import payload  # noqa: E402
from textinv.backends.jax.step import OptimizerConfig, make_optimizer  # noqa: E402
from textinv.config import LR_SCHEDULERS  # noqa: E402
from textinv.errors import TextinvError  # noqa: E402

HELPER = Path(__file__).parents[1] / "helpers_jax.py"
SRC = Path(__file__).parents[2] / "src"


@pytest.mark.parametrize("schedule", LR_SCHEDULERS)
def test_adamw_with_every_lr_schedule_steps_as_torch(schedule):
    """optax's AdamW with our schedule moves rows as torch AdamW + diffusers' get_scheduler, step by step."""
    from diffusers.optimization import get_scheduler

    cfg = OptimizerConfig(learning_rate=0.1, lr_scheduler=schedule, lr_warmup_steps=3, lr_num_cycles=2, total_steps=12)
    g = torch.Generator().manual_seed(0)
    start = torch.randn(2, 8, generator=g)
    grads = [torch.randn(2, 8, generator=g) for _ in range(cfg.total_steps)]
    rows = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.AdamW([rows], lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lrs = get_scheduler(
        schedule, optimizer=optimizer, num_warmup_steps=3, num_training_steps=cfg.total_steps, num_cycles=2
    )
    tx = make_optimizer(cfg)
    jrows = jnp.asarray(start.numpy())
    state = tx.init(jrows)
    for grad in grads:
        rows.grad = grad.clone()
        optimizer.step()
        lrs.step()
        updates, state = tx.update(jnp.asarray(grad.numpy()), state, jrows)
        jrows = optax.apply_updates(jrows, updates)
        np.testing.assert_allclose(np.asarray(jrows), rows.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(jrows), start.numpy())


@pytest.fixture(scope="module")
def sd1_runs(sd1_model, tmp_path_factory):
    """SD1_RUN trained by torch (train.py's loss, AdamW, diffusers' schedule) and by the JAX backend (fp32)."""
    concept = write_concept_images(tmp_path_factory.mktemp("jax-concept") / "concept")
    shared = shared_setup(sd1_model, concept, num_vectors=SD1_RUN["num_vectors"])
    start = shared.rows.detach().numpy().copy()
    run = (SD1_RUN["steps"], SD1_RUN["batch"], SD1_RUN["accum"])
    torch_losses, torch_rows = train_torch(shared, sd1_optimizer(), *run)
    backend = make_backend(shared, sd1_optimizer())
    jax_losses, jax_rows, jax_state = train_jax(shared, backend, *run)
    return {
        "shared": shared, "concept": concept, "start": start, "backend": backend, "torch": (torch_losses, torch_rows),
        "jax": (jax_losses, jax_rows), "jax_state": jax.device_get(jax_state),
    }  # fmt: skip


def test_jax_learns_what_torch_learns_sd1_two_vectors_accumulation(sd1_runs):
    (torch_losses, torch_rows), (jax_losses, jax_rows) = sd1_runs["torch"], sd1_runs["jax"]
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-4)
    assert moved_fraction(torch_rows, jax_rows, sd1_runs["start"]) <= 0.01
    assert np.linalg.norm(jax_rows - sd1_runs["start"]) > 1e-3  # it did learn


def test_jax_learns_what_torch_learns_sd2_v_prediction_min_snr(sd2_model, concept_dir):
    shared = shared_setup(sd2_model, concept_dir)
    start = shared.rows.detach().numpy().copy()
    optim = OptimizerConfig(learning_rate=5e-3, total_steps=3)
    torch_losses, torch_rows = train_torch(shared, optim, 3, 2, 1, snr_gamma=5.0)
    jax_losses, jax_rows, _ = train_jax(shared, make_backend(shared, optim), 3, 2, 1, snr_gamma=5.0)
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-4)
    assert moved_fraction(torch_rows, jax_rows, start) <= 0.01


def test_bf16_frozen_weights_train_fp32_rows_and_optimizer(sd1_runs):
    shared, run = sd1_runs["shared"], (SD1_RUN["steps"], SD1_RUN["batch"], SD1_RUN["accum"])
    backend = make_backend(shared, sd1_optimizer(), mixed_precision="bf16")
    losses, rows, state = train_jax(shared, backend, *run)
    assert state.rows.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim} == {jnp.dtype(jnp.float32)}
    assert {leaf.dtype for leaf in jax.tree.leaves(backend.frozen)} == {jnp.dtype(jnp.bfloat16)}
    np.testing.assert_allclose(losses, sd1_runs["jax"][0], rtol=0.05)
    assert moved_fraction(sd1_runs["jax"][1], rows, sd1_runs["start"]) < 0.2  # bf16 rounding, same learning


def test_resume_from_saved_state_is_bitwise_equal(sd1_runs, tmp_path):
    shared, backend = sd1_runs["shared"], sd1_runs["backend"]
    half = SD1_RUN["steps"] // 2
    _, _, state = train_jax(shared, backend, half, SD1_RUN["batch"], SD1_RUN["accum"])
    backend.save_state(state, tmp_path)
    template = backend.init_state(sd1_runs["start"])
    resumed = backend.load_state(template, tmp_path)
    _, _, state = train_jax(shared, backend, half, SD1_RUN["batch"], SD1_RUN["accum"], state=resumed, first=half)
    same = jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), jax.device_get(state), sd1_runs["jax_state"]
    )
    assert all(jax.tree.leaves(same))


def test_checkpoint_of_the_other_backend_is_refused_in_one_line(sd1_runs, tmp_path):
    jax_folder, torch_folder = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    jax_folder.mkdir(), torch_folder.mkdir()
    sd1_runs["backend"].save_state(sd1_runs["backend"].init_state(sd1_runs["start"]), jax_folder)
    torch.save({}, torch_folder / "optimizer.pt")
    with pytest.raises(TextinvError, match="written by --backend torch; resume it with --backend torch") as err:
        sd1_runs["backend"].load_state(sd1_runs["backend"].init_state(sd1_runs["start"]), torch_folder)
    assert "\n" not in str(err.value)
    with pytest.raises(TextinvError, match="written by --backend jax; resume it with --backend jax"):
        payload.require_backend(jax_folder, "torch")
    assert payload.checkpoint_backend(jax_folder) == "jax"


def test_two_xla_host_devices_learn_what_one_learns(sd1_runs, sd1_model):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, str(HELPER), "devices", str(sd1_model), str(sd1_runs["concept"])],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout.strip().splitlines()[-1])
    assert two["devices"] == 2
    np.testing.assert_allclose(two["losses"], sd1_runs["jax"][0], rtol=1e-5)
    assert moved_fraction(sd1_runs["jax"][1], np.asarray(two["rows"]), sd1_runs["start"]) <= 0.01


def test_two_processes_joined_by_jax_distributed_learn_what_one_learns(sd1_runs, sd1_model):
    """The multi-host path on one machine: two processes, one CPU device each, jax.distributed over gloo."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}"}
    env.update(JAX_NUM_PROCESSES="2", PYTHONPATH=os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p))
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, str(HELPER), "hosts", str(sd1_model), str(sd1_runs["concept"])]
    hosts = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, "JAX_PROCESS_ID": str(i)}
        )
        for i in range(2)
    ]
    outputs = [host.communicate(timeout=900) for host in hosts]
    for host, (_, err) in zip(hosts, outputs, strict=True):
        assert host.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["part"] for r in results] == [[0, 1], [1, 2]]  # each process drew its own half of the batch
    for result in results:
        assert result["devices"] == 2
        np.testing.assert_allclose(result["losses"], sd1_runs["jax"][0], rtol=1e-5)
        assert moved_fraction(sd1_runs["jax"][1], np.asarray(result["rows"]), sd1_runs["start"]) <= 0.01


@pytest.mark.parametrize(("allow_tf32", "expected"), [(False, "[HIGHEST, HIGHEST]"), (True, "[HIGH, HIGH]")])
def test_allow_tf32_decides_the_fp32_matmul_precision(allow_tf32, expected):
    from textinv.backends.jax.backend import set_matmul_precision

    before = jax.config.jax_default_matmul_precision
    try:
        set_matmul_precision(allow_tf32)
        x = jax.numpy.ones((4, 4))
        hlo = jax.jit(lambda a, b: a @ b).lower(x, x).as_text()
        assert f"precision = {expected}" in hlo  # HIGH: TF32 on GPUs that have it
    finally:
        jax.config.update("jax_default_matmul_precision", before)
