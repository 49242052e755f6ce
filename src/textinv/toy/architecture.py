"""What the toy recipe builds for each model family: the SD 1 toy and its SDXL-architecture twin.

The recipe (build.py) is one for both: the VAE, then each text encoder from scratch with caption-label heads,
then the UNet on captioned latents. What differs lives here: how many text encoders and tokenizers there are
(SDXL: a `CLIPTextModel` and a `CLIPTextModelWithProjection`, the second tokenizer padding with "!" as SDXL's
does), the UNet's added conditioning (SDXL's `text_time`: the pooled text embedding of `text_encoder_2` and the
size/crop `add_time_ids`), what a dropped caption conditions on, and the pipeline class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from textinv.errors import TextinvError

# SDXL's tokenizer_2 differs from tokenizer 1 only here: it pads with "!" (id 0), not with <|endoftext|>.
SDXL_PAD_TOKEN = "!"


@dataclass(frozen=True)
class EncoderSpec:
    """One text encoder of a toy model and the tokenizer that feeds it."""

    hidden: int
    projection: bool  # a CLIPTextModelWithProjection, whose projected pooled output conditions SDXL's UNet
    pad_token: str | None  # None: the CLIP tokenizer's own (<|endoftext|>)
    index: int  # its place in the pipeline: 0 is text_encoder/tokenizer, 1 is text_encoder_2/tokenizer_2

    @property
    def suffix(self) -> str:
        """`""` for the first encoder's folders (text_encoder, tokenizer), `"_2"` for the second."""
        return "" if self.index == 0 else f"_{self.index + 1}"


class ToyArchitecture:
    """The SD 1 toy: one CLIP text encoder whose last hidden state is the UNet's context."""

    name = "sd1"

    def encoders(self, cfg: Any) -> list[EncoderSpec]:
        return [EncoderSpec(cfg.text_hidden, projection=False, pad_token=None, index=0)]

    def unet_kwargs(self, cfg: Any) -> dict[str, Any]:
        return {"cross_attention_dim": cfg.text_hidden}

    def drop(self, hidden: torch.Tensor, unet_kwargs: dict[str, Any], dropped: torch.Tensor):
        """A dropped caption is encoded as "" (SD 1's unconditional prompt): nothing more to do."""
        return hidden, unet_kwargs

    def assemble(self, vae, encoders: list, tokenizers: list, unet, scheduler):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=encoders[0],
            tokenizer=tokenizers[0],
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


class ToyXLArchitecture(ToyArchitecture):
    """The SDXL twin: CLIP-L- and CLIP-G-like encoders (narrower, then wider, as SDXL's 768 and 1280) and
    a UNet with SDXL's `text_time` added conditioning, trained through textinv's own SDXL adapter."""

    name = "sdxl"

    def encoders(self, cfg: Any) -> list[EncoderSpec]:
        return [
            EncoderSpec(cfg.text_hidden, projection=False, pad_token=None, index=0),
            EncoderSpec(cfg.text_hidden_2, projection=True, pad_token=SDXL_PAD_TOKEN, index=1),
        ]

    def unet_kwargs(self, cfg: Any) -> dict[str, Any]:
        return {
            # Both encoders' penultimate hidden states, concatenated, as SDXL's UNet reads them.
            "cross_attention_dim": cfg.text_hidden + cfg.text_hidden_2,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": cfg.time_embed_dim,
            # Six time ids (original h, w; crop top, left; target h, w) and text_encoder_2's projection.
            "projection_class_embeddings_input_dim": 6 * cfg.time_embed_dim + cfg.text_hidden_2,
            "use_linear_projection": True,
        }

    def drop(self, hidden: torch.Tensor, unet_kwargs: dict[str, Any], dropped: torch.Tensor):
        """A dropped caption conditions on zeros (context and pooled text; the time ids stay): SDXL was trained so,
        and its pipeline's unconditional branch is zeros (`force_zeros_for_empty_prompt`, on in this twin)."""
        keep = (~dropped).to(hidden.dtype)
        added = dict(unet_kwargs["added_cond_kwargs"])
        added["text_embeds"] = added["text_embeds"] * keep[:, None]
        return hidden * keep[:, None, None], {**unet_kwargs, "added_cond_kwargs": added}

    def assemble(self, vae, encoders: list, tokenizers: list, unet, scheduler):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=encoders[0],
            text_encoder_2=encoders[1],
            tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1],
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )


ARCHITECTURES: dict[str, ToyArchitecture] = {"sd1": ToyArchitecture(), "sdxl": ToyXLArchitecture()}


def architecture(family: str) -> ToyArchitecture:
    if family not in ARCHITECTURES:
        raise TextinvError(f"no toy model recipe for family {family!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[family]
