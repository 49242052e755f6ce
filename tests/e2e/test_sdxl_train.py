"""SDXL textual inversion end to end on a tiny random SDXL pipeline (text encoders 32 and 64 wide, real CLIP BPE):
the same learning as diffusers' textual_inversion_sdxl.py, its drop-in files, and every other tool reading them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import card_snippets, learned, run_cli, run_subprocess, train_args

import textinv
from textinv.config import build_config
from textinv.embeddings import read_embedding
from textinv.errors import TextinvError
from textinv.train import train

pytestmark = pytest.mark.slow
TOKEN = "<cat-toy>"


def a1111_read_file(path: Path):
    """AUTOMATIC1111's reading of an embedding file (its safe-unpickle gate included), as restated in
    tests/unit/test_embeddings.py: (prompt word, vectors)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "unit_embeddings", Path(__file__).parents[1] / "unit" / "test_embeddings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.a1111_read_file(path)


def test_sdxl_learning_matches_a_straightforward_implementation(sdxl_model, concept_dir, tmp_path):
    """Cached posteriors + new-rows-only AdamW learn, in both encoders, what the reference method learns."""
    given = dict(
        pretrained_model_name_or_path=str(sdxl_model), train_data_dir=str(concept_dir), placeholder_token=TOKEN,
        initializer_token="toy", resolution=32, train_batch_size=2, max_train_steps=4, learning_rate=5e-2,
        lr_warmup_steps=0, adam_weight_decay=0.1, seed=3, report_to="none", num_vectors=2,
        output_dir=str(tmp_path / "ours"),
    )  # fmt: skip
    ours = train(build_config(given))
    oracle_losses, oracle_rows = _reference_sdxl_textual_inversion(**given)
    assert ours.losses == pytest.approx(oracle_losses, rel=1e-4, abs=1e-5)
    for name, oracle in zip(("learned_embeds.safetensors", "learned_embeds_2.safetensors"), oracle_rows, strict=True):
        rows = learned(tmp_path / "ours", name)[TOKEN]
        assert torch.allclose(rows, oracle, rtol=1e-4, atol=1e-5), name


def _reference_sdxl_textual_inversion(**cfg):
    """diffusers' SDXL method written out: both encoders resized, AdamW over both whole embedding matrices with
    the other rows restored each step, VAE-encode every step, penultimate hidden states of both encoders, the
    second's pooled output and (original h, w, crop 0 0, resolution, resolution) as added conditioning."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from textinv.data import OBJECT_TEMPLATES, SampleStream, load_concept_images, preprocess

    model, res = Path(cfg["pretrained_model_name_or_path"]), cfg["resolution"]
    tokenizers = [CLIPTokenizer.from_pretrained(model / sub) for sub in ("tokenizer", "tokenizer_2")]
    encoders = [CLIPTextModel.from_pretrained(model / "text_encoder"),
                CLIPTextModelWithProjection.from_pretrained(model / "text_encoder_2")]  # fmt: skip
    vae = AutoencoderKL.from_pretrained(model / "vae")
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    scheduler = DDPMScheduler.from_pretrained(model / "scheduler")
    names = [TOKEN] + [f"{TOKEN}_{i}" for i in range(1, cfg["num_vectors"])]
    weights, originals, keeps, new_ids = [], [], [], []
    for tokenizer, encoder in zip(tokenizers, encoders, strict=True):
        tokenizer.add_tokens(names)
        ids = tokenizer.convert_tokens_to_ids(names)
        init_id = tokenizer.encode(cfg["initializer_token"], add_special_tokens=False)[0]
        encoder.resize_token_embeddings(len(tokenizer))
        encoder.requires_grad_(False)
        weight = encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[ids] = weight[init_id].clone()
        weight.requires_grad_(True)
        keep = torch.ones(len(tokenizer), dtype=torch.bool)
        keep[ids] = False
        weights.append(weight), originals.append(weight.detach().clone()), keeps.append(keep), new_ids.append(ids)
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    optimizer = torch.optim.AdamW(weights, lr=cfg["learning_rate"], weight_decay=cfg["adam_weight_decay"])
    images, _ = load_concept_images(cfg["train_data_dir"])
    batch = cfg["train_batch_size"]
    side = res // (2 ** (len(vae.config.block_out_channels) - 1))
    stream = SampleStream(cfg["seed"], len(images), 100, len(OBJECT_TEMPLATES), (4, side, side), 1000)
    losses = []
    for step in range(cfg["max_train_steps"]):
        d = stream.draw(range(step * batch, (step + 1) * batch))
        pixels = torch.stack(
            [preprocess(images[i], res, False, bool(f)) for i, f in zip(d.image_idx, d.flip, strict=True)]
        )
        dist = vae.encode(pixels).latent_dist
        latents = (dist.mean + dist.std * d.latent_eps) * vae.config.scaling_factor
        noisy = scheduler.add_noise(latents, d.noise, d.timesteps)
        texts = [OBJECT_TEMPLATES[int(t)].format(" ".join(names)) for t in d.template_idx]
        ids = [tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
               for tok in tokenizers]  # fmt: skip
        hidden_1 = encoders[0](ids[0], output_hidden_states=True).hidden_states[-2]
        out_2 = encoders[1](ids[1], output_hidden_states=True)
        time_ids = torch.tensor([[images[i].height, images[i].width, 0, 0, res, res] for i in d.image_idx.tolist()])
        added = {"text_embeds": out_2[0], "time_ids": time_ids.float()}
        cond = torch.cat([hidden_1, out_2.hidden_states[-2]], dim=-1)
        pred = unet(noisy, d.timesteps, cond, added_cond_kwargs=added).sample
        loss = torch.nn.functional.mse_loss(pred.float(), d.noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            for weight, original, keep in zip(weights, originals, keeps, strict=True):
                weight[keep] = original[keep]
        losses.append(float(loss.detach()))
    return losses, [w.detach()[i].clone() for w, i in zip(weights, new_ids, strict=True)]


def test_sdxl_cli_output_loads_everywhere(sdxl_model, concept_dir, tmp_path, capsys):
    """A user's run: drop-in files, diffusers' two load_textual_inversion calls, load_concept, convert, inspect,
    generate, the model card's code as written."""
    from diffusers import StableDiffusionXLPipeline

    out = tmp_path / "run"
    extra = ("--num_vectors", "2", "--save_steps", "2", "--validation_prompt", f"a {TOKEN}",
             "--num_validation_images", "1", "--validation_steps", "100")  # fmt: skip
    assert run_cli(train_args(sdxl_model, concept_dir, out, *extra)) == 0
    rows = [learned(out, f"learned_embeds{s}.safetensors")[TOKEN] for s in ("", "_2")]
    assert [tuple(r.shape) for r in rows] == [(2, 32), (2, 64)]
    for suffix, r in zip(("", "_2"), rows, strict=True):
        assert torch.equal(torch.load(out / f"learned_embeds{suffix}.bin", weights_only=True)[TOKEN], r)
        for step in (2, 4):
            assert list(learned(out, f"learned_embeds{suffix}-steps-{step}.safetensors")) == [TOKEN]
    assert (out / "token_identifier.txt").read_text() == TOKEN
    assert (out / "type_of_concept.txt").read_text() == "object"
    assert len(list((out / "validation" / "step-4").glob("*.png"))) == 1

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_model)
    toy = [pipe.tokenizer.encode("toy", add_special_tokens=False)[0], pipe.tokenizer_2.encode("toy")[1]]
    for encoder, tid, r in zip((pipe.text_encoder, pipe.text_encoder_2), toy, rows, strict=True):
        assert not torch.allclose(r, encoder.get_input_embeddings().weight[tid].expand_as(r)), "an encoder is unmoved"
    # diffusers, as its SDXL docs load a two-file concept: one call per text encoder
    pipe.load_textual_inversion(out, weight_name="learned_embeds.safetensors", token=TOKEN,
                                text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)  # fmt: skip
    pipe.load_textual_inversion(out, weight_name="learned_embeds_2.safetensors", token=TOKEN,
                                text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)  # fmt: skip
    for tokenizer, encoder, r in zip((pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2),
                                     rows, strict=True):  # fmt: skip
        ids = tokenizer.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids].detach(), r)
    image = pipe(f"a {TOKEN}", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)

    # textinv: one call, the folder is one concept
    fresh = StableDiffusionXLPipeline.from_pretrained(sdxl_model)
    assert textinv.load_concept(fresh, out) == TOKEN
    ids = fresh.tokenizer_2.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"])
    assert torch.equal(fresh.text_encoder_2.get_input_embeddings().weight[ids].detach(), rows[1])

    # the model card's Python, pasted beside the concept and the model as the card says
    (python, code), (bash, _) = card_snippets((out / "README.md").read_text())
    assert (python, bash) == ("python", "bash")
    assert code.count("load_textual_inversion") == 2 and "StableDiffusionXLPipeline" in code
    (tmp_path / sdxl_model.name).symlink_to(sdxl_model)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, f"{code}\n{ran.stderr[-2000:]}"
    assert list(tmp_path.glob("*.png")), "the card's snippet saves its image"

    # convert to the one-file layout A1111/ComfyUI/kohya read, and back, bitwise
    for suffix in (".safetensors", ".pt"):
        dest = tmp_path / f"cat-toy{suffix}"
        assert run_cli(["convert", out, dest, "--to", "a1111"]) == 0
        back = read_embedding(dest)
        assert back.format == "sdxl" and all(torch.equal(a, b) for a, b in zip(back.vectors, rows, strict=True))
        name, vec = a1111_read_file(dest)
        assert name == "cat-toy" and torch.equal(vec, torch.cat(rows, dim=-1))
    capsys.readouterr()
    assert run_cli(["inspect", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "sdxl" and report["dim"] == [32, 64] and report["num_vectors"] == 2

    gen = tmp_path / "gen"
    argv = ["generate", f"a {TOKEN}", "--model", sdxl_model, "--concept", out, "-n", "1", "--steps", "2",
            "--out", gen, "--quiet"]  # fmt: skip
    assert run_cli(argv) == 0
    assert len(list(gen.glob("0*.png"))) == 1


def test_sdxl_resume_after_kill_is_bitwise_equal(sdxl_model, concept_dir, tmp_path):
    """kill -9 between checkpoints, resume from latest: both encoders' rows equal an uninterrupted run's."""
    steps, every = 8, 2
    full = tmp_path / "full"
    done = run_subprocess(train_args(sdxl_model, concept_dir, full, "--checkpointing_steps", str(every), steps=steps))
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    args = train_args(sdxl_model, concept_dir, killed, "--checkpointing_steps", str(every), steps=steps)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "textinv", *map(str, args)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoint-4").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint-4").is_dir()
    assert not (killed / "learned_embeds.safetensors").exists(), "the run finished before it was killed"
    saved = learned(killed / "checkpoint-4", "learned_rows.safetensors")
    assert [tuple(t.shape) for t in saved.values()] == [(1, 32), (1, 64)]

    resume = ["--resume_from_checkpoint", "latest", "--checkpointing_steps", str(every)]
    done = run_subprocess(train_args(sdxl_model, concept_dir, killed, *resume, steps=steps))
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("learned_embeds.safetensors", "learned_embeds_2.safetensors"):
        assert torch.equal(learned(full, name)[TOKEN], learned(killed, name)[TOKEN]), name


def test_sdxl_two_processes_match_one_and_checkpoints_cross_over(sdxl_model, concept_dir, tmp_path):
    from test_distributed import _args, _launch

    one, two = tmp_path / "one", tmp_path / "two"
    _launch(1, _args(sdxl_model, concept_dir, one, 2, 4))
    _launch(2, _args(sdxl_model, concept_dir, two, 1, 4))
    names = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")
    for name in names:
        a, b = learned(one, name)[TOKEN], learned(two, name)[TOKEN]
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (name, (a - b).abs().max())
    cont = tmp_path / "from-two"
    cont.mkdir()
    shutil.copytree(two / "checkpoint-2", cont / "checkpoint-2")
    _launch(1, _args(sdxl_model, concept_dir, cont, 2, 4, "--resume_from_checkpoint", "latest"))
    for name in names:
        a, c = learned(one, name)[TOKEN], learned(cont, name)[TOKEN]
        assert torch.allclose(a, c, rtol=1e-5, atol=1e-6), (name, (a - c).abs().max())


def test_families_are_refused_across(sdxl_model, sd1_model, concept_dir, tmp_path, capsys):
    """An SD 1 concept into SDXL, an SDXL concept into SD 1, an SDXL checkpoint resumed on SD 1: one line each."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    xl, one = tmp_path / "xl", tmp_path / "one"
    assert run_cli(train_args(sdxl_model, concept_dir, xl, "--checkpointing_steps", "1", steps=1)) == 0
    assert run_cli(train_args(sd1_model, concept_dir, one, steps=1)) == 0
    sd1_pipe = StableDiffusionPipeline.from_pretrained(sd1_model, safety_checker=None)
    with pytest.raises(TextinvError, match=r"is for custom-32\+64 \(32\+64\) but the model is custom-32 \(32\)"):
        textinv.load_concept(sd1_pipe, xl)
    xl_pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_model)
    with pytest.raises(TextinvError, match=r"is for custom-32 \(32\) but the model is custom-32\+64 \(32\+64\)"):
        textinv.load_concept(xl_pipe, one)
    capsys.readouterr()
    resumed = train_args(sd1_model, concept_dir, xl, "--resume_from_checkpoint", "latest", steps=2)
    assert run_cli(resumed) == 2
    err = capsys.readouterr().err
    assert re.search(r"custom-32\+64 \(32\+64\) model but this model is custom-32 \(32\)", err), err
    assert "Traceback" not in err
