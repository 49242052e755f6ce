"""Write a diffusers pipeline folder as one original-layout (LDM / SGM) checkpoint: the single `.safetensors`
file that AUTOMATIC1111 and ComfyUI load, and that diffusers' `from_single_file` converts back.

Test-only, for the tiny test pipelines: the key names of Stable Diffusion's original code, written from its
layout (input/middle/output blocks, the VAE's down/mid/up, the text encoders under the conditioner).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
LINEAR_PAIR = {"linear_1": "0", "linear_2": "2"}


def _resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{RESNET[name]}.{tail}"


def _block_part(kind: str, tail: str) -> str:
    """Within an original input/output block: the resnet is part 0, the attention (transformer) part 1."""
    return f"1.{tail}" if kind == "attentions" else f"0.{_resnet(tail)}"


def unet_key(key: str, layers: int, up_has_attention: list[bool]) -> str:
    """A diffusers UNet2DConditionModel key in the original `model.diffusion_model.` layout."""
    parts = key.split(".")
    head, rest = parts[0], ".".join(parts[1:])
    if head in ("time_embedding", "add_embedding"):
        prefix = "time_embed" if head == "time_embedding" else "label_emb.0"
        return f"{prefix}.{LINEAR_PAIR[parts[1]]}.{'.'.join(parts[2:])}"
    if head == "conv_in":
        return f"input_blocks.0.0.{rest}"
    if head == "conv_norm_out":
        return f"out.0.{rest}"
    if head == "conv_out":
        return f"out.2.{rest}"
    if head == "mid_block":
        kind, index, tail = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "attentions":
            return f"middle_block.1.{tail}"
        return f"middle_block.{2 * index}.{_resnet(tail)}"
    block, kind = int(parts[1]), parts[2]
    index, tail = int(parts[3]), ".".join(parts[4:])
    if head == "down_blocks":
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.* -> input_blocks.N.0.op.*
            return f"input_blocks.{(block + 1) * (layers + 1)}.0.op.{tail.removeprefix('conv.')}"
        return f"input_blocks.{block * (layers + 1) + index + 1}.{_block_part(kind, tail)}"
    if head == "up_blocks":
        if kind == "upsamplers":
            # in the block's last output block, after its resnet (and attention)
            return f"output_blocks.{block * (layers + 1) + layers}.{2 if up_has_attention[block] else 1}.{tail}"
        # an up block has one resnet more than a down block
        return f"output_blocks.{block * (layers + 1) + index}.{_block_part(kind, tail)}"
    raise KeyError(key)


def vae_key(key: str, num_blocks: int) -> str:
    """A diffusers AutoencoderKL key in the original `first_stage_model.` layout."""
    side, head, *parts = key.split(".")
    if side in ("quant_conv", "post_quant_conv"):
        return key
    rest = ".".join(parts)
    if head in ("conv_in", "conv_out"):
        return f"{side}.{head}.{rest}"
    if head == "conv_norm_out":
        return f"{side}.norm_out.{rest}"
    if head == "mid_block":
        kind, index, tail = parts[0], int(parts[1]), ".".join(parts[2:])
        if kind == "attentions":
            for name, original in VAE_ATTENTION.items():
                if tail.startswith(name + "."):
                    return f"{side}.mid.attn_1.{original}.{tail[len(name) + 1 :]}"
        return f"{side}.mid.block_{index + 1}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
    block, kind, tail = int(parts[0]), parts[1], ".".join(parts[3:])
    level = block if head == "down_blocks" else num_blocks - 1 - block
    group = "down" if head == "down_blocks" else "up"
    if kind in ("downsamplers", "upsamplers"):
        return f"{side}.{group}.{level}.{'downsample' if kind == 'downsamplers' else 'upsample'}.{tail}"
    return f"{side}.{group}.{level}.block.{parts[2]}.{tail.replace('conv_shortcut', 'nin_shortcut')}"


def _clip_l(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel's weights under `prefix` + `text_model.` (its original layout)."""
    return {f"{prefix}text_model.{k.removeprefix('text_model.')}": v for k, v in state.items()}


def _open_clip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModelWithProjection's weights in OpenCLIP's layout (SDXL's `text_encoder_2`)."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {
        "token_embedding.weight": state["embeddings.token_embedding.weight"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_final.weight": state["final_layer_norm.weight"],
        "ln_final.bias": state["final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].T.contiguous(),
    }
    layer = 0
    while f"encoder.layers.{layer}.layer_norm1.weight" in state:
        src, dst = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            qkv = [state[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            out[f"{dst}attn.out_proj.{kind}"] = state[f"{src}self_attn.out_proj.{kind}"]
            out[f"{dst}ln_1.{kind}"] = state[f"{src}layer_norm1.{kind}"]
            out[f"{dst}ln_2.{kind}"] = state[f"{src}layer_norm2.{kind}"]
            out[f"{dst}mlp.c_fc.{kind}"] = state[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}mlp.c_proj.{kind}"] = state[f"{src}mlp.fc2.{kind}"]
        layer += 1
    return {prefix + k: v for k, v in out.items()}


def config_repo(architecture: str) -> str:
    """The Hub repo whose configs the installed diffusers builds a single file of `architecture` with ("v1", "v2",
    "xl_base"; the v1 repo moved in 2024)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    return DIFFUSERS_DEFAULT_PIPELINE_PATHS[architecture]["pretrained_model_name_or_path"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    (file,) = sorted(folder.glob("*.safetensors"))
    return load_file(str(file))


def save_single_file(pipeline: Path, target: Path) -> Path:
    """The pipeline folder's UNet, VAE and text encoder(s) as one original-layout safetensors file."""
    unet_config = json.loads((pipeline / "unet" / "config.json").read_text())
    layers = unet_config["layers_per_block"]
    up_has_attention = ["CrossAttn" in kind for kind in unet_config["up_block_types"]]
    num_blocks = len(json.loads((pipeline / "vae" / "config.json").read_text())["block_out_channels"])
    state = {
        f"model.diffusion_model.{unet_key(k, layers, up_has_attention)}": v
        for k, v in _weights(pipeline / "unet").items()
    }
    for k, v in _weights(pipeline / "vae").items():
        if ".mid_block.attentions." in k and v.ndim == 2:  # the original VAE attention runs 1x1 convolutions
            v = v[:, :, None, None]
        state[f"first_stage_model.{vae_key(k, num_blocks)}"] = v
    if (pipeline / "text_encoder_2").is_dir():
        state.update(_clip_l(_weights(pipeline / "text_encoder"), "conditioner.embedders.0.transformer."))
        state.update(_open_clip(_weights(pipeline / "text_encoder_2"), "conditioner.embedders.1.model."))
    else:
        state.update(_clip_l(_weights(pipeline / "text_encoder"), "cond_stage_model.transformer."))
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target
