"""The Flax text encoder and UNet against the transformers / diffusers modules on tiny random pipelines (fp32, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason='the JAX backend tests need pip install -e ".[jax]"')
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from textinv.backends.jax.weights import (  # noqa: E402
    build_unet,
    load_text_encoder,
    load_unet,
    read_torch_module,
)
from textinv.errors import TextinvError  # noqa: E402

TOLERANCE = 1e-4


def _jitted(module):
    graphdef, state = nnx.split(module)
    return jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args)), state


@pytest.mark.parametrize("model", ["sd1_model", "sd2_model"])
def test_clip_text_encoder_matches_transformers(model, request):
    from transformers import CLIPTextModel

    from textinv.tokens import PlaceholderEmbedding

    folder = request.getfixturevalue(model) / "text_encoder"
    reference = CLIPTextModel.from_pretrained(folder)
    ids = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(0))
    ids[0, 5], ids[1, 7] = 49408, 49409  # two new rows past the table's end, as placeholders are
    rows = torch.randn(2, reference.config.hidden_size, generator=torch.Generator().manual_seed(1))
    reference.set_input_embeddings(PlaceholderEmbedding(reference.get_input_embeddings(), 49408, rows))
    with torch.no_grad():
        expected = reference(ids)[0].numpy()
    forward, state = _jitted(load_text_encoder(folder))
    got = np.asarray(forward(state, jnp.asarray(ids.numpy()), jnp.asarray(rows.numpy()), 49408))
    assert np.abs(got - expected).max() < TOLERANCE


@pytest.mark.parametrize("model", ["sd1_model", "sd2_model"])
# (12, 10): upsampling back to odd skip sizes; (32, 32): SD 1's self-attention (8 heads) runs in query blocks
@pytest.mark.parametrize("latent_size", [(16, 16), (12, 10), (32, 32)])
def test_unet_matches_diffusers(model, latent_size, request):
    from diffusers import UNet2DConditionModel

    folder = request.getfixturevalue(model) / "unet"
    reference = UNet2DConditionModel.from_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, *latent_size, generator=g)
    timesteps = torch.tensor([3, 917])
    context = torch.randn(2, 77, reference.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        expected = reference(sample, timesteps, context).sample.numpy()
    forward, state = _jitted(load_unet(folder))
    got = np.asarray(forward(state, *(jnp.asarray(t.numpy()) for t in (sample, timesteps, context))))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE


def test_a_text_encoder_with_placeholder_rows_reads_as_its_files(sd1_model):
    """A single file's text encoder is read after the token's rows were installed: the wrapper reads as the
    embedding it wraps, the rows left out (the backend trains its own copy)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from textinv.tokens import add_placeholder_tokens, install_placeholder_embedding

    module = CLIPTextModel.from_pretrained(sd1_model / "text_encoder")
    before = {key: value.clone() for key, value in module.state_dict().items()}
    tokenizer = CLIPTokenizer.from_pretrained(sd1_model / "tokenizer")
    install_placeholder_embedding(module, tokenizer, add_placeholder_tokens(tokenizer, "<t>", 2), 1000)
    read = {key: load() for key, load in read_torch_module(module)}
    assert sorted(read) == sorted(before)
    assert all(np.array_equal(read[key], before[key].numpy()) for key in before)


def test_unet_from_a_loaded_torch_module_equals_the_one_from_its_files(sd1_model):
    """Single-file models have no component folder: their loaded module's state dict gives the same parameters."""
    from diffusers import UNet2DConditionModel

    folder = sd1_model / "unet"
    from_files = nnx.state(load_unet(folder))
    module = UNet2DConditionModel.from_pretrained(folder)
    from_module = nnx.state(build_unet(dict(module.config), read_torch_module(module)))
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), from_files, from_module)
    assert all(jax.tree.leaves(same))


def _mapped_kb(path) -> int:
    """Resident kB of this process's memory maps of `path` (/proc/self/smaps)."""
    total, current = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split()[0].endswith(":"):  # a mapping's first line: address range ... path
            current = line.rstrip().endswith(str(path))
        elif current and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads /proc/self/smaps (Linux)")
def test_weights_are_read_with_a_bounded_part_of_the_file_mapped(tmp_path):
    """Loading SD's 3.4 GB UNet once kept every page of its file mapped until the end beside the copies; the
    reader re-opens the file every `reopen_bytes`, so only that much of it is resident at a time, and
    every tensor still arrives whole and in order."""
    from safetensors.numpy import save_file

    from textinv.backends.jax.weights import read_safetensors

    g = np.random.default_rng(0)
    arrays = {f"t{i:02d}": g.standard_normal((1024, 1024)).astype(np.float32) for i in range(16)}  # 4 MiB each
    file = tmp_path / "model.safetensors"
    save_file(arrays, str(file))
    mapped, got = [], {}
    for key, read in read_safetensors([file], reopen_bytes=8 << 20):
        got[key] = np.array(read())
        mapped.append(_mapped_kb(file))
    assert list(got) == list(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)
    assert max(mapped) <= 12 << 10  # at most 8 MiB read since the last open, plus the header's page
    mapped_once = []
    for _key, read in read_safetensors([file], reopen_bytes=1 << 40):
        np.array(read())  # the copy touches the tensor's pages of the map, as loading does
        mapped_once.append(_mapped_kb(file))
    assert max(mapped_once) >= 60 << 10  # the control: one open keeps every page it read mapped


def test_unet_loads_in_bf16(sd1_model):
    unet = load_unet(sd1_model / "unet", dtype=jnp.bfloat16)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(unet, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}


def test_sdxl_like_unet_is_refused_in_one_line(sd1_model):
    config = json.loads((sd1_model / "unet" / "config.json").read_text())
    config["addition_embed_type"] = "text_time"
    with pytest.raises(TextinvError, match="addition_embed_type='text_time'.*--backend torch") as err:
        build_unet(config, iter(()))
    assert "\n" not in str(err.value)


def test_missing_tensor_is_a_clear_error(sd1_model):
    from diffusers import UNet2DConditionModel

    module = UNet2DConditionModel.from_pretrained(sd1_model / "unet")
    tensors = [item for item in read_torch_module(module) if not item[0].startswith("conv_out.")]
    with pytest.raises(TextinvError, match=r"lack 2 tensor\(s\) \(first: conv_out.bias\)"):
        build_unet(dict(module.config), iter(tensors))


def test_gradient_checkpointing_gives_the_same_gradient(sd1_model):
    unet = load_unet(sd1_model / "unet")
    g = np.random.default_rng(0)
    sample, context = g.standard_normal((1, 4, 16, 16), np.float32), g.standard_normal((1, 77, 32), np.float32)

    def grad_of_context(checkpointing: bool) -> np.ndarray:
        unet.gradient_checkpointing = checkpointing
        graphdef, state = nnx.split(unet)
        loss = lambda ctx: jnp.sum(nnx.merge(graphdef, state)(sample, jnp.asarray([500]), ctx) ** 2)  # noqa: E731
        # The rematerialised blocks show as remat calls in the traced gradient.
        assert ("remat" in str(jax.make_jaxpr(jax.grad(loss))(context))) == checkpointing
        return np.asarray(jax.jit(jax.grad(loss))(context))

    plain, rematerialised = grad_of_context(False), grad_of_context(True)
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(rematerialised, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "batch, size, din, dout, kernel, stride",
    [
        (1, 4, 64, 16, 3, 1),  # a small map with many channels: SD's 8x8 / 4x4 levels in miniature
        (2, 5, 64, 8, 3, 2),  # a downsampler on an odd map, batch 2
        (1, 9, 8, 16, 1, 1),  # 1x1 (shortcut / proj_in): a product at every size
    ],
)
def test_conv_as_patches_product_matches_torch(batch, size, din, dout, kernel, stride):
    """Where XLA's CPU convolution is slow, `Conv` is a product over image patches: it must be the same map, forward
    and input gradient, as torch's conv2d with the same weights (what the UNet test checks at the model's scale)."""
    from textinv.backends.jax.layers import conv, patches_product_wins

    layer = conv(din, dout, kernel, nnx.Rngs(0), stride=stride)
    out_size = (size + 2 * (kernel // 2) - kernel) // stride + 1
    assert patches_product_wins(batch * out_size**2, din, kernel * kernel, jax.default_backend())
    x = np.random.default_rng(0).standard_normal((batch, size, size, din)).astype(np.float32)
    probe = np.random.default_rng(1).standard_normal((batch, out_size, out_size, dout)).astype(np.float32)

    loss = lambda x: jnp.sum(layer(x) * probe)  # noqa: E731
    traced = str(jax.make_jaxpr(loss)(x))
    assert "conv_general_dilated" not in traced and "dot_general" in traced
    got, got_grad = jax.jit(layer)(x), jax.jit(jax.grad(loss))(x)

    weight = torch.tensor(np.asarray(layer.kernel[...]).transpose(3, 2, 0, 1), requires_grad=False)
    bias = torch.tensor(np.asarray(layer.bias[...]))
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    expected = torch.nn.functional.conv2d(tx, weight, bias, stride=stride, padding=kernel // 2)
    (expected * torch.tensor(probe.transpose(0, 3, 1, 2))).sum().backward()
    np.testing.assert_allclose(np.asarray(got), expected.detach().numpy().transpose(0, 2, 3, 1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_grad), tx.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_large_maps_and_accelerators_keep_xla_convolutions():
    from textinv.backends.jax.layers import patches_product_wins

    assert not patches_product_wins(32 * 32, 320, 9, "cpu")  # SD's 32x32 level at 256 px: Eigen's convolution wins
    assert patches_product_wins(8 * 8, 1280, 9, "cpu")
    assert patches_product_wins(64 * 64, 320, 1, "cpu")
    assert not any(patches_product_wins(8 * 8, 1280, 9, platform) for platform in ("gpu", "tpu"))


@pytest.mark.parametrize("size", [(5, 7), (4, 4)])
def test_upsampled_conv_is_torch_nearest_upsampling_then_the_convolution(size):
    """`upsampled_conv` (four 2x2 phase products on the small map) against diffusers' Upsample2D maths in torch:
    interpolate(nearest, 2x), then the 3x3 convolution; forward, and the gradients for the input and the kernel."""
    from textinv.backends.jax.layers import upsampled_conv

    g = np.random.default_rng(0)
    x = g.standard_normal((2, *size, 6)).astype(np.float32)
    kernel, bias = g.standard_normal((3, 3, 6, 5)).astype(np.float32), g.standard_normal(5).astype(np.float32)
    probe = g.standard_normal((2, 2 * size[0], 2 * size[1], 5)).astype(np.float32)

    def loss(x, kernel):
        return jnp.sum(upsampled_conv(x, kernel, jnp.asarray(bias)) * probe)

    got, (got_dx, got_dk) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(kernel))
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tk = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)
    up = torch.nn.functional.interpolate(tx, scale_factor=2.0, mode="nearest")
    out = torch.nn.functional.conv2d(up, tk, torch.tensor(bias), padding=1)
    expected = (out * torch.tensor(probe.transpose(0, 3, 1, 2))).sum()
    expected.backward()
    assert abs(float(got) - expected.item()) < 1e-3
    np.testing.assert_allclose(np.asarray(got_dx), tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got_dk), tk.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)


def test_upsamplers_of_large_cpu_maps_convolve_the_small_map():
    from textinv.backends.jax.layers import upsampled_conv_wins
    from textinv.backends.jax.unet import Sampler

    assert upsampled_conv_wins(16 * 16, "cpu") and upsampled_conv_wins(2 * 8 * 8, "cpu")
    assert not upsampled_conv_wins(8 * 8, "cpu") and not upsampled_conv_wins(4 * 4, "cpu")  # bound by the kernel
    assert not any(upsampled_conv_wins(32 * 32, platform) for platform in ("gpu", "tpu"))
    sampler = Sampler(8, down=False, rngs=nnx.Rngs(0))
    for side, takes in ((16, True), (4, False)):
        jaxpr = str(jax.make_jaxpr(lambda x: sampler(x))(jnp.zeros((1, side, side, 8))))
        # the 2x map is built (and convolved) only where the small map's phase products do not win
        assert ("conv_general_dilated" not in jaxpr and "dot_general" in jaxpr) == takes


@pytest.mark.parametrize("size, kernel, stride", [((9, 7), 3, 1), ((9, 9), 3, 2), ((8, 8), 3, 2), ((6, 5), 1, 1)])
def test_xla_conv_gradients_are_autodiffs(size, kernel, stride):
    """`xla_conv` writes its input gradient out by hand (a plain convolution with the flipped kernel, see its
    docstring): both gradients must be exactly what autodiff of XLA's convolution gives, odd sizes and strides too."""
    from textinv.backends.jax.layers import NHWC, xla_conv

    g = np.random.default_rng(0)
    x = jnp.asarray(g.standard_normal((2, *size, 8)), jnp.float32)
    weights = jnp.asarray(g.standard_normal((kernel, kernel, 8, 5)), jnp.float32)
    pad = ((kernel // 2, kernel // 2),) * 2

    def plain(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=NHWC)

    def loss(conv):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1)))

    ours = loss(lambda x, w: xla_conv(x, w, (stride, stride), pad))(x, weights)
    autodiff = loss(plain)(x, weights)
    for got, expected in zip(ours, autodiff, strict=True):
        assert got.shape == expected.shape and float(jnp.abs(expected).max()) > 0
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("queries, keys, block", [(100, 100, 32), (64, 77, 64), (40, 120, 16), (30, 77, 30)])
def test_blockwise_attention_is_attention_forward_and_backward(queries, keys, block):
    """Query blocks (or one block of all the queries) and the recomputed backward (flash-attention style) give
    softmax attention and its exact gradients for q, k and v, also when the block does not divide the queries."""
    from textinv.backends.jax.attention import blockwise_attention

    g = np.random.default_rng(0)
    q = jnp.asarray(g.standard_normal((2, 3, queries, 8)), jnp.float32)
    k, v = (jnp.asarray(g.standard_normal((2, 3, keys, 8)), jnp.float32) for _ in range(2))
    probe = jnp.asarray(g.standard_normal((2, 3, queries, 8)), jnp.float32)

    def whole(q, k, v):  # jax's own, in its [B, T, H, D] layout
        t = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
        return t(jax.nn.dot_product_attention(t(q), t(k), t(v)))

    def value_and_grads(fn):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * probe), argnums=(0, 1, 2)))(q, k, v)

    (ours, ours_grads), (theirs, their_grads) = (
        value_and_grads(lambda q, k, v: blockwise_attention(q, k, v, block)),
        value_and_grads(whole),
    )
    np.testing.assert_allclose(np.asarray(blockwise_attention(q, k, v, block)), np.asarray(whole(q, k, v)), atol=1e-5)
    assert abs(float(ours) - float(theirs)) < 1e-3
    for got, expected in zip(ours_grads, their_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-5)


def test_attention_runs_as_blockwise_attention_on_a_cpu_in_blocks_when_large():
    from textinv.backends.jax import attention
    from textinv.backends.jax.layers import multi_head_attention

    assert attention.runs_here("cpu") and not attention.runs_here("gpu") and not attention.runs_here("tpu")
    assert attention.query_block(8, 32 * 32, 32 * 32) < 32 * 32  # SD's 32x32 level at 256 px: in blocks
    assert attention.query_block(8, 16 * 16, 16 * 16) == 16 * 16 and attention.query_block(8, 4096, 77) == 4096
    for tokens in (1024, 256):
        x = jnp.zeros((1, tokens, 64))
        assert "custom_vjp_call" in str(jax.make_jaxpr(lambda x: multi_head_attention(x, x, x, heads=8))(x))
    causal = jnp.zeros((1, 77, 64))  # the text encoder's keeps jax's attention
    jaxpr = str(jax.make_jaxpr(lambda x: multi_head_attention(x, x, x, heads=8, causal=True))(causal))
    assert "custom_vjp_call" not in jaxpr
