"""`RandomHorizontalFlip` for PIL images, matching torchvision's: flip when `torch.rand(1) < p`."""

from __future__ import annotations

import torch
from PIL import Image


class RandomHorizontalFlip(torch.nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, img: Image.Image) -> Image.Image:
        if torch.rand(1) < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img
