"""The few torchvision transforms diffusers' textual-inversion scripts use, for PIL images, matching torchvision's
draws: `RandomHorizontalFlip` (flip when `torch.rand(1) < p`), and for textual_inversion_sdxl.py `CenterCrop`,
`RandomCrop.get_params` (`torch.randint` for the corner) and `functional.crop`."""

from __future__ import annotations

import types

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


def _crop(img: Image.Image, top: int, left: int, height: int, width: int) -> Image.Image:
    return img.crop((left, top, left + width, top + height))


functional = types.SimpleNamespace(crop=_crop)


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


class CenterCrop(torch.nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = _pair(size)

    def forward(self, img: Image.Image) -> Image.Image:
        height, width = self.size
        top = int(round((img.height - height) / 2.0))
        left = int(round((img.width - width) / 2.0))
        return _crop(img, top, left, height, width)


class RandomCrop(torch.nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = _pair(size)

    @staticmethod
    def get_params(img: Image.Image, output_size) -> tuple[int, int, int, int]:
        height, width = _pair(output_size)
        if img.height == height and img.width == width:
            return 0, 0, height, width
        top = int(torch.randint(0, img.height - height + 1, size=(1,)).item())
        left = int(torch.randint(0, img.width - width + 1, size=(1,)).item())
        return top, left, height, width

    def forward(self, img: Image.Image) -> Image.Image:
        return _crop(img, *self.get_params(img, self.size))
