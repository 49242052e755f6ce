"""Training backends: what runs the gradient path (frozen text encoder(s) + UNet, loss, the rows' update).

Everything else — images, the VAE posterior cache, prompts, the counter-based sample stream, checkpoint
bookkeeping, output files, validation sampling — is shared and lives outside. `pytorch.TorchBackend` is the
default; a backend's own checkpoint payload (optimizer state...) is written and read by the backend.
"""
