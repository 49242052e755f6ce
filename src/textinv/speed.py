"""Performance options that do not change what is learned (memory layout, kernels).

Each lever here is measured by `bench/levers.py` before it is kept; bench/RESULTS.md has the numbers.
On CPU none has paid so far, so by default this hook applies nothing (`--torch_compile` is opt-in,
for GPUs: 2.37x the reference's steps/s on an H200 with 'reduce-overhead'):

- channels_last for the UNet: 0.97x per step at SD-1.5 size, 256 px, and +2.2 GB peak RSS (the
  converted weights are copies of the memory-mapped originals).
- torch.compile of the UNet: 0.94x per step at SD-1.5 size after a 13.6-minute compile on 2 cores,
  +2.2 GB peak RSS. A step is 97% convolution / matmul / attention kernels (profile in RESULTS.md),
  which compiling does not speed up.

What does pay is structural and lives in the trainer: posteriors cached once, AdamW over the new rows
only, no per-step restore, the VAE freed after caching.
"""

from __future__ import annotations

import torch


def apply_speedups(unet, text_encoder, device: torch.device, compile_mode: str = "no") -> None:
    """Apply the speed-ups to the frozen models, in place: none by default (see above), and
    `torch.compile` of the UNet's forward when the user asks for it (`--torch_compile MODE`).

    Only the forward is wrapped, so the module, its weights and `save_pretrained` are untouched, and
    the input-gradient backward is compiled with it. A step's shapes never change, so it compiles once.
    """
    if compile_mode != "no":
        unet.forward = torch.compile(unet.forward, mode=compile_mode)
