"""SDXL: two CLIP text encoders (CLIP-L, OpenCLIP-bigG) and size/crop micro-conditioning.

As diffusers' `textual_inversion_sdxl.py` conditions its UNet: the penultimate hidden states of both encoders,
concatenated on the feature axis; the pooled, projected output of `text_encoder_2` (`text_embeds`); and
`time_ids` = (original height, width, crop top, left, target height, width) of each training image.

That script resizes every image to resolution x resolution before it crops, so its crop is a no-op and the crop
corner is always (0, 0); the flip comes after and does not move it. textinv does the same by default. With
`--center_crop` textinv keeps its SD 1/2 pixels (the centre square, then the resize) and reports that crop's
corner in the resized frame, as SDXL's own training and diffusers' `train_text_to_image_sdxl.py` do.
"""

from __future__ import annotations

from typing import Any

import torch

from textinv.families.base import Conditioning, FamilyAdapter


def crop_top_left(size: tuple[int, int], resolution: int, center_crop: bool) -> tuple[int, int]:
    """(top, left) of the training crop, in the frame whose shorter side is `resolution`."""
    if not center_crop:
        return 0, 0
    width, height = size
    scale = resolution / min(width, height)
    top = max(0, int(round((height * scale - resolution) / 2.0)))
    left = max(0, int(round((width * scale - resolution) / 2.0)))
    return top, left


def time_ids(sizes: list[tuple[int, int]], resolution: int, center_crop: bool) -> torch.Tensor:
    """SDXL's `add_time_ids` of each image, [num_images, 6]: original (h, w), crop (top, left), target (h, w)."""
    rows = [
        (height, width, *crop_top_left((width, height), resolution, center_crop), resolution, resolution)
        for width, height in sizes
    ]
    return torch.tensor(rows, dtype=torch.float32)


class StableDiffusionXLAdapter(FamilyAdapter):
    """Rows in both encoders; conditioning from both, plus the pooled text and each image's time ids."""

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        unet_config = getattr(getattr(pipe, "unet", None), "config", None)
        return (
            getattr(pipe, "text_encoder", None) is not None
            and getattr(pipe, "text_encoder_2", None) is not None
            and getattr(unet_config, "addition_embed_type", None) == "text_time"
        )

    @property
    def name(self) -> str:
        # The architecture names the family; random-weight test models have other widths than SDXL 1.0.
        return "sdxl"

    def set_images(self, sizes: list[tuple[int, int]], resolution: int, center_crop: bool) -> None:
        super().set_images(sizes, resolution, center_crop)
        self.time_ids = time_ids(self.image_sizes, resolution, center_crop)

    def condition(self, ids: tuple[torch.Tensor, ...], image_idx: torch.Tensor, dtype: torch.dtype) -> Conditioning:
        encoder_1, encoder_2 = self.text_encoders
        hidden_1 = encoder_1(ids[0], output_hidden_states=True).hidden_states[-2]
        out_2 = encoder_2(ids[1], output_hidden_states=True)
        hidden = torch.cat([hidden_1.to(dtype), out_2.hidden_states[-2].to(dtype)], dim=-1)
        added = {
            "text_embeds": out_2[0].to(dtype),
            "time_ids": self.time_ids.to(image_idx.device)[image_idx].to(dtype),
        }
        return Conditioning(hidden_states=hidden, unet_kwargs={"added_cond_kwargs": added})
