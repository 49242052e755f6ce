"""`textinv train` end to end on tiny SD-1-like and SD-2-like pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import learned, run_cli, run_subprocess, train_args
from safetensors.torch import load_file

from textinv.config import build_config
from textinv.train import train


def test_train_writes_the_concepts_library_layout_and_diffusers_loads_it(sd1_model, concept_dir, tmp_path):
    out = tmp_path / "run"
    rc = run_cli(train_args(sd1_model, concept_dir, out, "--num_vectors", "2", "--save_steps", "2"))
    assert rc == 0
    emb = learned(out)
    assert list(emb) == ["<cat-toy>"] and emb["<cat-toy>"].shape == (2, 32)
    assert emb["<cat-toy>"].dtype == torch.float32
    from_bin = torch.load(out / "learned_embeds.bin", weights_only=True)
    assert torch.equal(from_bin["<cat-toy>"], emb["<cat-toy>"])
    assert (out / "token_identifier.txt").read_text() == "<cat-toy>"
    assert (out / "type_of_concept.txt").read_text() == "object"
    assert (out / "learned_embeds-steps-2.safetensors").is_file()
    assert (out / "learned_embeds-steps-4.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "<cat-toy>" in card and "load_textual_inversion" in card
    assert sd1_model.name in card and str(sd1_model) not in card  # the model's name, never a local path

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd1_model, safety_checker=None)
    pipe.load_textual_inversion(str(out))
    ids = pipe.tokenizer(pipe.maybe_convert_prompt("a <cat-toy> backpack", pipe.tokenizer)).input_ids
    assert len(ids) == 2 + 4  # bos, a, <cat-toy>, <cat-toy>_1, backpack, eos
    rows = pipe.text_encoder.get_input_embeddings().weight[ids[2:4]]
    assert torch.allclose(rows, emb["<cat-toy>"])
    image = pipe("a <cat-toy> backpack", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_training_moves_the_embedding_and_lowers_nothing_else(sd1_model, concept_dir, tmp_path):
    """Every UNet, VAE and text-encoder weight stays bitwise unchanged; only the new rows differ."""
    out = tmp_path / "full"
    rc = run_cli(train_args(sd1_model, concept_dir, out, "--save_as_full_pipeline", "--num_vectors", "2"))
    assert rc == 0
    for part in ("unet", "vae"):
        before = load_file(str(next((sd1_model / part).glob("*.safetensors"))))
        after = load_file(str(next((out / part).glob("*.safetensors"))))
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), part
    before = load_file(str(next((sd1_model / "text_encoder").glob("*.safetensors"))))
    after = load_file(str(next((out / "text_encoder").glob("*.safetensors"))))
    key = next(k for k in before if k.endswith("token_embedding.weight"))
    for k in before:
        if k != key:
            assert torch.equal(before[k], after[k]), k
    vocab = before[key].shape[0]
    assert torch.equal(after[key][:vocab], before[key])
    rows = after[key][vocab:]
    assert rows.shape == (2, 32)
    assert torch.equal(rows, learned(out)["<cat-toy>"])
    init_row = before[key][_token_id(sd1_model, "toy")]
    assert not torch.allclose(rows[0], init_row), "the embedding did not move"


def _token_id(model: Path, word: str) -> int:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(model / "tokenizer").encode(word, add_special_tokens=False)[0]


@pytest.mark.parametrize(
    "model_fixture, snr_gamma, fp8_base, flip_p",
    [
        ("sd1_model", None, False, 0.5),
        ("sd2_model", None, False, 0.5),
        ("sd1_model", 2.0, False, 0.5),
        ("sd2_model", 2.0, False, 0.5),
        ("sd1_model", None, True, 0.5),
        ("sd2_model", 2.0, True, 0.5),
        ("sd1_model", None, False, 0.0),
        ("sd2_model", None, False, 1.0),
    ],
)
def test_learning_matches_a_straightforward_implementation(
    model_fixture, snr_gamma, fp8_base, flip_p, request, concept_dir, tmp_path
):
    """Cached posteriors + new-rows-only AdamW learn what the reference method learns (float tolerance),
    with plain MSE and with Min-SNR weighting (ε-prediction SD-1 and v-prediction SD-2), with the
    frozen weights in fp8 (against the method run on a model whose weights were rounded the same way),
    and with mirroring turned off (--flip_p 0) or always on (1; both cache one posterior per image)."""
    model = request.getfixturevalue(model_fixture)
    given = dict(
        pretrained_model_name_or_path=str(model),
        train_data_dir=str(concept_dir),
        placeholder_token="<cat-toy>",
        initializer_token="toy",
        resolution=32,
        train_batch_size=2,
        max_train_steps=5,
        learning_rate=5e-2,
        lr_warmup_steps=0,
        adam_weight_decay=0.1,
        seed=3,
        report_to="none",
        num_vectors=2,
        snr_gamma=snr_gamma,
        fp8_base=fp8_base,
        flip_p=flip_p,
        output_dir=str(tmp_path / "ours"),
    )
    ours = train(build_config(given))
    ours_rows = learned(tmp_path / "ours")["<cat-toy>"]
    oracle_losses, oracle_rows = _reference_textual_inversion(**given)
    assert ours.losses == pytest.approx(oracle_losses, rel=1e-4, abs=1e-5)
    assert torch.allclose(ours_rows, oracle_rows, rtol=1e-4, atol=1e-5)


def test_flip_p_changes_only_which_samples_are_mirrored():
    """--flip_p: never / the reference's coin / always; every other draw of a sample stays the same."""
    from textinv.data import SampleStream

    def draws(**kw):
        return SampleStream(3, 4, 10, 5, (4, 2, 2), 1000, **kw).draw(range(64))

    never, coin, always, default = draws(flip_p=0.0), draws(flip_p=0.5), draws(flip_p=1.0), draws()
    assert not never.flip.any() and always.flip.all() and 16 < int(coin.flip.sum()) < 48
    assert torch.equal(default.flip, coin.flip)  # the reference's p = 0.5 unless told otherwise
    for other in (never, always):
        for name in ("image_idx", "template_idx", "latent_eps", "noise", "timesteps"):
            assert torch.equal(getattr(other, name), getattr(coin, name)), name


def test_the_posterior_cache_encodes_only_the_flips_a_run_can_draw(sd1_model, concept_dir):
    """--flip_p 0 (or 1) never draws the other side, so its VAE encode is skipped; the latents drawn are
    the same as from the cache of both sides."""
    from diffusers import AutoencoderKL

    from textinv.data import SampleStream, cache_latent_posteriors, flips_drawn, load_concept_images

    vae = AutoencoderKL.from_pretrained(sd1_model / "vae")
    images, _ = load_concept_images(concept_dir)
    encoded = []
    encode = vae.encode
    vae.encode = lambda pixels: encoded.append(len(pixels)) or encode(pixels)

    def cache(flip_p):
        encoded.clear()
        return cache_latent_posteriors(vae, images, 32, True, "cpu", torch.float32, flips_drawn(flip_p))

    both = cache(0.5)
    assert both.flips == (False, True) and encoded == [2] * len(images)
    for flip_p in (0.0, 1.0):
        one = cache(flip_p)
        assert one.flips == (flip_p == 1.0,) and encoded == [1] * len(images)
        draws = SampleStream(0, len(images), 2, 3, both.latent_shape, 1000, flip_p=flip_p).draw(range(12))
        latents = one.sample(draws.image_idx, draws.flip, draws.latent_eps)
        # encoded one image at a time instead of two: the same up to the kernels' rounding
        assert torch.allclose(latents, both.sample(draws.image_idx, draws.flip, draws.latent_eps), atol=1e-5)


def _reference_textual_inversion(**cfg):
    """The method as the reference script does it: VAE-encode every step, AdamW over the whole
    embedding matrix, restore the original rows after each step. Same random draws as ours."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from textinv.data import OBJECT_TEMPLATES, SampleStream, load_concept_images, preprocess

    model = Path(cfg["pretrained_model_name_or_path"])
    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model / "text_encoder")
    vae = AutoencoderKL.from_pretrained(model / "vae")
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    scheduler = DDPMScheduler.from_pretrained(model / "scheduler")
    n = cfg["num_vectors"]
    names = ["<cat-toy>"] + [f"<cat-toy>_{i}" for i in range(1, n)]
    tokenizer.add_tokens(names)
    new_ids = tokenizer.convert_tokens_to_ids(names)
    init_id = tokenizer.encode(cfg["initializer_token"], add_special_tokens=False)[0]
    text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[new_ids] = weight[init_id].clone()
    original = weight.detach().clone()
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if cfg["fp8_base"]:
        _round_to_fp8(unet)
        _round_to_fp8(text_encoder)
    weight.requires_grad_(True)
    optimizer = torch.optim.AdamW([weight], lr=cfg["learning_rate"], weight_decay=cfg["adam_weight_decay"])
    images, _ = load_concept_images(cfg["train_data_dir"])
    batch = cfg["train_batch_size"]
    latent_side = cfg["resolution"] // (2 ** (len(vae.config.block_out_channels) - 1))
    stream = SampleStream(cfg["seed"], len(images), 100, len(OBJECT_TEMPLATES), (4, latent_side, latent_side), 1000)
    mirror = {0.5: bool, 0.0: lambda _f: False, 1.0: lambda _f: True}[cfg["flip_p"]]  # coin, never, always
    keep = torch.ones(len(tokenizer), dtype=torch.bool)
    keep[new_ids] = False
    losses = []
    for step in range(cfg["max_train_steps"]):
        d = stream.draw(range(step * batch, (step + 1) * batch))
        pairs = zip(d.image_idx, d.flip, strict=True)
        pixels = torch.stack([preprocess(images[i], cfg["resolution"], False, mirror(f)) for i, f in pairs])
        dist = vae.encode(pixels).latent_dist
        latents = (dist.mean + dist.std * d.latent_eps) * vae.config.scaling_factor
        noisy = scheduler.add_noise(latents, d.noise, d.timesteps)
        texts = [OBJECT_TEMPLATES[int(t)].format(" ".join(names)) for t in d.template_idx]
        ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        cond = text_encoder(ids)[0]
        pred = unet(noisy, d.timesteps, cond).sample
        target = (
            d.noise
            if scheduler.config.prediction_type == "epsilon"
            else scheduler.get_velocity(latents, d.noise, d.timesteps)
        )
        if cfg["snr_gamma"] is None:
            loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        else:  # Min-SNR-γ, straight from the paper's definitions
            abar = scheduler.alphas_cumprod[d.timesteps]
            snr = abar / (1 - abar)
            extra = 1 if scheduler.config.prediction_type == "v_prediction" else 0
            weight_t = torch.minimum(snr, torch.full_like(snr, cfg["snr_gamma"])) / (snr + extra)
            per_sample = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
            loss = (weight_t * per_sample).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            weight[keep] = original[keep]
        losses.append(float(loss))
    return losses, weight.detach()[new_ids].clone()


@torch.no_grad()
def _round_to_fp8(model: torch.nn.Module) -> None:
    """Every linear/conv weight rounded to float8_e4m3fn with one scale per output channel, max |w| -> 448."""
    for m in model.modules():
        if type(m) in (torch.nn.Linear, torch.nn.Conv2d):
            scale = m.weight.flatten(1).abs().amax(1).clamp(min=1e-12) / 448.0
            shape = (-1,) + (1,) * (m.weight.dim() - 1)
            m.weight.copy_((m.weight / scale.view(shape)).to(torch.float8_e4m3fn).float() * scale.view(shape))


def test_min_snr_weights_are_finite_on_a_zero_terminal_snr_schedule():
    """SNR = 0 at the last timestep: ε-weights tend to 1 and v-weights to 0 there, never 0/0."""
    from diffusers import DDIMScheduler

    from textinv.backends.pytorch import min_snr_weights

    sched = DDIMScheduler(rescale_betas_zero_snr=True, beta_schedule="scaled_linear", prediction_type="v_prediction")
    t = torch.tensor([0, 500, 999])
    abar = sched.alphas_cumprod[t]
    snr = abar / (1 - abar)
    assert snr[-1] == 0
    eps, v = min_snr_weights(sched, t, 5.0, "epsilon"), min_snr_weights(sched, t, 5.0, "v_prediction")
    assert torch.isfinite(eps).all() and torch.isfinite(v).all()
    assert eps[-1] == 1 and v[-1] == 0
    assert eps[0] == pytest.approx(5.0 / snr[0].item(), rel=1e-5)  # high SNR: capped at gamma
    assert v[0] == pytest.approx(5.0 / (snr[0].item() + 1), rel=1e-5)
    assert v[1] == pytest.approx(min(snr[1].item(), 5.0) / (snr[1].item() + 1), rel=1e-5)


def test_sd2_v_prediction_trains_against_velocity(sd2_model, concept_dir, tmp_path, monkeypatch):
    calls = []
    from diffusers import DDPMScheduler

    real = DDPMScheduler.get_velocity

    def spy(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(DDPMScheduler, "get_velocity", spy)
    assert run_cli(train_args(sd2_model, concept_dir, tmp_path / "v", steps=2)) == 0
    assert len(calls) == 2
    assert learned(tmp_path / "v")["<cat-toy>"].shape == (1, 32)


def test_checkpoints_total_limit_keeps_the_newest(sd1_model, concept_dir, tmp_path):
    out = tmp_path / "ck"
    args = ["--checkpointing_steps", "1", "--checkpoints_total_limit", "2"]
    assert run_cli(train_args(sd1_model, concept_dir, out, *args, steps=3)) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    # Resume from checkpoint-2 and continue to step 6; the limit still holds (diffusers' own test).
    resume = ["--resume_from_checkpoint", "checkpoint-2", *args]
    assert run_cli(train_args(sd1_model, concept_dir, out, *resume, steps=6)) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]
    state = json.loads((out / "checkpoint-6" / "training_state.json").read_text())
    assert state["global_step"] == 6 and state["samples_seen"] == 12


def test_resume_after_kill_is_bitwise_equal(sd1_model, concept_dir, tmp_path):
    """kill -9 between checkpoints, resume from latest: the embedding equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    steps, every = 12, 3
    # Every run in its own process with the same thread count: bitwise float equality needs the same
    # kernels and reduction order, which torch only promises for the same number of threads.
    full = tmp_path / "full"
    done = run_subprocess(train_args(sd1_model, concept_dir, full, "--checkpointing_steps", str(every), steps=steps))
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    args = train_args(sd1_model, concept_dir, killed, "--checkpointing_steps", str(every), steps=steps)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "textinv", *args], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoint-6").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint-6").is_dir()
    assert not (killed / "learned_embeds.safetensors").exists(), "the run finished before it was killed"

    resume = ["--resume_from_checkpoint", "latest", "--checkpointing_steps", str(every)]
    done = run_subprocess(train_args(sd1_model, concept_dir, killed, *resume, steps=steps))
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.equal(learned(full)["<cat-toy>"], learned(killed)["<cat-toy>"])
    assert not list(killed.glob(".checkpoint-*.tmp"))


def test_a_crash_while_writing_a_checkpoint_keeps_latest_intact(sd1_model, concept_dir, tmp_path, monkeypatch):
    from textinv import checkpoint as ckpt

    out = tmp_path / "crash"
    assert run_cli(train_args(sd1_model, concept_dir, out, "--checkpointing_steps", "2", steps=2)) == 0
    real_save = torch.save

    def dying_save(obj, path, *a, **k):
        real_save(obj, path, *a, **k)
        if "scheduler" in str(path):
            raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    resume = ["--resume_from_checkpoint", "latest", "--checkpointing_steps", "2", "--debug"]
    with pytest.raises(OSError):
        run_cli(train_args(sd1_model, concept_dir, out, *resume, steps=4))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "checkpoint-4").exists()
    loaded = ckpt.load_checkpoint(ckpt.resolve_resume(out, "latest"))
    assert loaded.state.global_step == 2


def test_installing_the_placeholder_keeps_the_original_matrix_in_place(sd1_model):
    """No resize while training: the frozen matrix is the very same tensor, and new ids read the new rows."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from textinv.tokens import add_placeholder_tokens, bake_placeholder_rows, install_placeholder_embedding

    tokenizer = CLIPTokenizer.from_pretrained(sd1_model / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(sd1_model / "text_encoder")
    before = text_encoder.get_input_embeddings().weight
    ptr, original = before.data_ptr(), before.detach().clone()
    placeholder = add_placeholder_tokens(tokenizer, "<x>", 2)
    module = install_placeholder_embedding(text_encoder, tokenizer, placeholder, init_id=320)
    assert module.base.weight.data_ptr() == ptr and module.base.weight.shape == original.shape
    with torch.no_grad():
        module.rows.copy_(torch.randn_like(module.rows))
    ids = torch.tensor([[320, *placeholder.ids]])
    out = text_encoder.get_input_embeddings()(ids)
    assert torch.equal(out[0, 0], original[320]) and torch.equal(out[0, 1:], module.rows)
    out.sum().backward()
    assert module.rows.grad is not None and module.base.weight.grad is None
    bake_placeholder_rows(text_encoder)
    weight = text_encoder.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer)
    assert torch.equal(weight[: original.shape[0]], original)
    assert torch.equal(weight[list(placeholder.ids)], module.rows.detach())
