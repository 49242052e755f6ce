"""SD 1.x and SD 2.x: one CLIP text encoder whose last hidden state conditions the UNet.

SD 2.x differs only in its encoder (OpenCLIP-H, 1024 wide, its config already cut to the layer SD uses)
and often in v-prediction, which the scheduler config says; neither changes what this adapter does.
"""

from __future__ import annotations

from typing import Any

import torch

from textinv.families.base import Conditioning, FamilyAdapter


class StableDiffusionAdapter(FamilyAdapter):
    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return getattr(pipe, "text_encoder_2", None) is None and getattr(pipe, "text_encoder", None) is not None

    def condition(self, ids: tuple[torch.Tensor, ...], image_idx: torch.Tensor, dtype: torch.dtype) -> Conditioning:
        (encoder,) = self.text_encoders
        return Conditioning(hidden_states=encoder(ids[0])[0].to(dtype))
