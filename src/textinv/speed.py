"""Performance options that do not change what is learned (memory layout, kernels).

Each lever here is measured by `bench/` before it is kept.
"""

from __future__ import annotations

import torch


def apply_speedups(unet, text_encoder, device: torch.device) -> None:
    """Apply the measured-to-pay speed-ups to the frozen models, in place."""
    return None
