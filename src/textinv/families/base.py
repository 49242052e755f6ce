"""The family seam: what `train()` asks of a model family, so the loop never says `if sdxl`.

An adapter wraps a loaded pipeline and answers four questions: which tokenizers and text encoders
get the new token's rows; how token ids become the UNet's conditioning (hidden states plus any
added conditioning); what else an image tells the UNet (SDXL's original size and crop); and which
files a concept is saved as. Everything else (data, loss, optimiser, checkpoints) is shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from textinv.families import family_of_dims, text_encoder_pairs
from textinv.tokens import (
    Placeholder,
    PlaceholderEmbedding,
    add_placeholder_tokens,
    initializer_ids,
    install_placeholder_embedding,
)


@dataclass
class Conditioning:
    """What the UNet is called with besides the noisy latents and timesteps."""

    hidden_states: torch.Tensor
    unet_kwargs: dict[str, Any] = field(default_factory=dict)


class FamilyAdapter(ABC):
    """One model family's answers for training. Subclasses say `matches` and `condition`."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.pairs = text_encoder_pairs(pipe)
        self.placeholders: list[Placeholder] = []
        self.embeddings: list[PlaceholderEmbedding] = []

    @classmethod
    @abstractmethod
    def matches(cls, pipe: Any) -> bool: ...

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(int(enc.get_input_embeddings().weight.shape[1]) for _, enc in self.pairs)

    @property
    def name(self) -> str:
        return family_of_dims(self.dims)

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [enc for _, enc in self.pairs]

    @property
    def rows(self) -> list[torch.nn.Parameter]:
        """The trainable tensors: each encoder's new rows, [num_vectors, dim], fp32."""
        return [emb.rows for emb in self.embeddings]

    def add_placeholder(self, token: str, num_vectors: int, initializer: str) -> None:
        """Add the token to every tokenizer and install trainable rows, initialised from `initializer`'s word(s)
        (`tokens.initializer_ids`: A1111's rule for several words)."""
        for tokenizer, encoder in self.pairs:
            placeholder = add_placeholder_tokens(tokenizer, token, num_vectors)
            init_ids = initializer_ids(tokenizer, initializer, num_vectors)
            self.placeholders.append(placeholder)
            self.embeddings.append(install_placeholder_embedding(encoder, tokenizer, placeholder, init_ids))

    @property
    def prompt_string(self) -> str:
        """How the placeholder is written in a training prompt (`<tok> <tok>_1 ...`)."""
        return self.placeholders[0].prompt_string

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, ...]:
        """Every tokenizer's ids for `texts`, padded to its max length: one [len(texts), L] tensor each."""
        return tuple(
            tok(
                texts, padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="pt"
            ).input_ids
            for tok, _ in self.pairs
        )

    def set_images(self, sizes: list[tuple[int, int]], resolution: int, center_crop: bool) -> None:
        """The training images' (width, height) as loaded, and how they are cropped and resized: SDXL conditions
        on them (`add_time_ids`); SD 1/2 only keep them."""
        self.image_sizes, self.resolution, self.center_crop = list(sizes), resolution, center_crop

    @abstractmethod
    def condition(self, ids: tuple[torch.Tensor, ...], image_idx: torch.Tensor, dtype: torch.dtype) -> Conditioning:
        """The UNet's conditioning for a batch of prompts (`ids`, one tensor per tokenizer) and their images."""
