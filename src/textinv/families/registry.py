"""The trainable families, tried in order by `families.adapter_for`. A new family adds its adapter here."""

from __future__ import annotations

from textinv.families.sd import StableDiffusionAdapter
from textinv.families.sdxl import StableDiffusionXLAdapter

ADAPTERS = [StableDiffusionAdapter, StableDiffusionXLAdapter]
