"""The trainable families, tried in order by `families.adapter_for`. A new family adds its adapter here."""

from __future__ import annotations

from textinv.families.sd import StableDiffusionAdapter

ADAPTERS = [StableDiffusionAdapter]
