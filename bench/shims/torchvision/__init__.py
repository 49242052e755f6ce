"""Bench-only stand-in for torchvision: just what diffusers' textual_inversion.py imports.

PyPI's torchvision wheel does not match this project's torch build, so the benchmark puts this
folder first on the reference run's PYTHONPATH instead. The reference only uses
`transforms.RandomHorizontalFlip`; it is implemented here with PIL and the same torch RNG call
as torchvision's (`torch.rand(1) < p`), so a seeded run draws the same flips.
"""

__version__ = "0.0.0+textinv-bench-shim"
