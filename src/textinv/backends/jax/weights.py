"""Parameters for the Flax modules, read from the model's own diffusers/transformers weights: no conversion step.

A component folder's safetensors files (`diffusion_pytorch_model*.safetensors`, `model*.safetensors`, sharded
or not, with a `--variant`) are read tensor by tensor, or, for models that have no such folder (single-file
checkpoints), the loaded PyTorch module's state dict is read in memory. Each PyTorch key names its parameter
in the module tree (`unet.py` and `clip.py` use diffusers' names); layouts are changed on the way in
(linear [out, in] → [in, out], convolution OIHW → HWIO). Every parameter must be filled and every key used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from textinv.backends.jax.clip import CLIPTextConfig, CLIPTextEncoder
from textinv.backends.jax.unet import UNet, UNetConfig
from textinv.errors import TextinvError

# diffusers/transformers names → this package's module tree.
UNET_RENAMES = (
    (".downsamplers.0.", ".sampler."),
    (".upsamplers.0.", ".sampler."),
    (".to_out.0.", ".to_out."),
    (".ff.net.0.proj.", ".ff.proj."),
    (".ff.net.2.", ".ff.out."),
)
CLIP_RENAMES = ((".text_model.", "."), (".encoder.layers.", ".layers."))
# Buffers some transformers versions save beside the weights; nothing to load.
IGNORED_KEYS = {"text_model.embeddings.position_ids"}
WEIGHT_NAMES = ("kernel", "scale", "embedding")

TensorSource = Iterator[tuple[str, Callable[[], np.ndarray]]]


def _module_path(key: str, renames) -> tuple:
    key = f".{key}"
    for old, new in renames:
        key = key.replace(old, new)
    return tuple(int(p) if p.isdigit() else p for p in key.strip(".").split("."))


def _to_layout(array: np.ndarray, target_name: str, target_ndim: int) -> np.ndarray:
    # numpy, not jax: eager jax ops would compile once per tensor shape, seconds for a whole UNet.
    if target_name == "kernel" and array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)  # OIHW → HWIO
    elif target_name == "kernel" and array.ndim == 2 and target_ndim == 4:
        array = array.T[None, None]  # a linear weight for a 1x1 convolution
    elif target_name == "kernel" and array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array)


def fill_params(abstract: nnx.Module, tensors: TensorSource, renames, dtype, what: str) -> nnx.Module:
    """The module `abstract` (from `nnx.eval_shape`) with every parameter read from `tensors`, cast to `dtype`."""
    graphdef, state = nnx.split(abstract)
    targets = {tuple(path): var for path, var in nnx.to_flat_state(state)}
    filled = {}
    for key, read in tensors:
        if key in IGNORED_KEYS:
            continue
        *module, leaf = _module_path(key, renames)
        names = (leaf,) if leaf == "bias" else WEIGHT_NAMES
        path = next((p for p in (tuple(module) + (n,) for n in names) if p in targets), None)
        if path is None:
            raise TextinvError(
                f"the {what} weights hold {key!r}, which the JAX {what} does not have; use --backend torch"
            )
        spec = targets[path].get_value()
        array = _to_layout(read(), path[-1], len(spec.shape))
        if array.shape != spec.shape:
            raise TextinvError(
                f"the {what} weight {key!r} has shape {tuple(array.shape)}, its config says {tuple(spec.shape)}; "
                "the model folder is inconsistent"
            )
        # On the device now, one tensor at a time: the host copy is dropped before the next is read, so loading
        # never holds the model twice.
        filled[path] = targets[path].replace(jax.device_put(array.astype(dtype, copy=False)))
        del array
    missing = sorted(".".join(map(str, p)) for p in targets if p not in filled)
    if missing:
        raise TextinvError(
            f"the {what} weights lack {len(missing)} tensor(s) (first: {missing[0]}); the model files are incomplete"
        )
    return nnx.merge(graphdef, nnx.from_flat_state(list(filled.items())))


def component_files(folder: Path, variant: str | None = None) -> list[Path]:
    """The safetensors file(s) of a diffusers/transformers component folder, sharded or not."""
    folder = Path(folder)
    for stem in ("diffusion_pytorch_model", "model"):
        name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            return [folder / s for s in shards]
    raise TextinvError(
        f"no .safetensors weights in {folder}{f' for --variant {variant}' if variant else ''}; "
        "the JAX backend reads safetensors files (convert .bin weights with diffusers' save_pretrained)"
    )


# The file is opened again after this many bytes were read from it: what a reader touched of its memory map counts
# in the process's resident memory until the map is closed, so this bounds the file pages held while loading.
REOPEN_BYTES = 256 * 1024**2


def read_safetensors(files: list[Path], reopen_bytes: int = REOPEN_BYTES) -> TensorSource:
    """Each tensor of `files`, read only when asked (the weights are never all held twice).

    Read through torch, whose safetensors reader knows bf16 (numpy's does not); fp16 and fp32 stay as stored.
    The file is re-opened every `reopen_bytes`, so at most that much of it stays mapped (the copies are what
    the model keeps).
    """
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())  # noqa: SIM118 (safe_open is not a mapping)
        next_key = 0
        while next_key < len(keys):
            with safe_open(str(file), framework="pt") as f:
                read = 0
                while next_key < len(keys) and read < reopen_bytes:
                    key, next_key = keys[next_key], next_key + 1
                    tensor = f.get_tensor(key)
                    read += tensor.numel() * tensor.element_size()
                    yield key, lambda tensor=tensor: _numpy(tensor)


def _numpy(tensor) -> np.ndarray:
    import torch

    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def read_torch_module(module) -> TensorSource:
    """The state dict of a loaded PyTorch module, for models with no component folder (single files).

    A text encoder read after its placeholder rows were installed holds a `PlaceholderEmbedding`: it is read as
    the embedding it wraps (its frozen matrix; the rows train in the backend's own copy), as the files hold it.
    """
    import torch

    from textinv.tokens import PlaceholderEmbedding

    wrapped = {name for name, sub in module.named_modules() if isinstance(sub, PlaceholderEmbedding)}
    for key, tensor in module.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in wrapped:  # the wrapper's own trainable rows
            continue
        parent, _, child = owner.rpartition(".")
        if parent in wrapped and child == "base":
            key = f"{parent}.{leaf}"
        yield key, lambda t=tensor: t.detach().to("cpu", torch.float32).numpy()


def _config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))


def build_unet(config: dict, tensors: TensorSource, dtype=jnp.float32) -> UNet:
    cfg = UNetConfig.from_dict(config)
    abstract = nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0)))
    return fill_params(abstract, tensors, UNET_RENAMES, dtype, "UNet")


def build_text_encoder(config: dict, tensors: TensorSource, dtype=jnp.float32) -> CLIPTextEncoder:
    cfg = CLIPTextConfig.from_dict(config)
    abstract = nnx.eval_shape(lambda: CLIPTextEncoder(cfg, rngs=nnx.Rngs(0)))
    return fill_params(abstract, tensors, CLIP_RENAMES, dtype, "text encoder")


def load_unet(folder: Path, dtype=jnp.float32, variant: str | None = None) -> UNet:
    """The Flax UNet of a diffusers `unet/` folder."""
    return build_unet(_config(folder), read_safetensors(component_files(folder, variant)), dtype)


def load_text_encoder(folder: Path, dtype=jnp.float32, variant: str | None = None) -> CLIPTextEncoder:
    """The Flax CLIP text encoder of a transformers `text_encoder/` folder."""
    return build_text_encoder(_config(folder), read_safetensors(component_files(folder, variant)), dtype)
