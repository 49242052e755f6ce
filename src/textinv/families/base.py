"""The family seam: what `train()` asks of a model family, so the loop never says `if sdxl`.

An adapter wraps a loaded pipeline and answers four questions: which tokenizers and text encoders
get the new token's rows; how token ids become the UNet's conditioning (hidden states plus any
added conditioning); what else an image tells the UNet (SDXL's original size and crop); and which
files a concept is saved as. Everything else (data, loss, optimiser, checkpoints) is shared.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


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
        # Every tokenizer must read the initializer before any of them is changed; errors name the tokenizer.
        all_ids = [
            initializer_ids(tok, initializer, num_vectors, self._tokenizer_name(i))
            for i, (tok, _) in enumerate(self.pairs)
        ]
        for (tokenizer, encoder), init_ids in zip(self.pairs, all_ids, strict=True):
            placeholder = add_placeholder_tokens(tokenizer, token, num_vectors)
            self.placeholders.append(placeholder)
            self.embeddings.append(install_placeholder_embedding(encoder, tokenizer, placeholder, init_ids))

    def _tokenizer_name(self, index: int) -> str | None:
        """The pipeline attribute of tokenizer `index` (`tokenizer`, `tokenizer_2`), for errors; None with one."""
        if len(self.pairs) == 1:
            return None
        return "tokenizer" if index == 0 else f"tokenizer_{index + 1}"

    @property
    def prompt_string(self) -> str:
        """How the placeholder is written in a training prompt (`<tok> <tok>_1 ...`)."""
        return self.placeholders[0].prompt_string

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, ...]:
        """Every tokenizer's ids for `texts`, padded to its max length: one [len(texts), L] tensor each.

        Prompts past the text encoder's length are cut there, as in diffusers; that is said once (a long caption
        loses its end, and one whose placeholder falls past the cut teaches the token nothing).
        """
        ids = tuple(
            tok(
                texts, padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="pt"
            ).input_ids
            for tok, _ in self.pairs
        )
        self._warn_if_truncated(texts, ids[0])
        return ids

    def _warn_if_truncated(self, texts: list[str], ids: torch.Tensor) -> None:
        tokenizer = self.pairs[0][0]
        lengths = [len(x) for x in tokenizer(texts, truncation=False, verbose=False).input_ids]
        long = [i for i, n in enumerate(lengths) if n > tokenizer.model_max_length]
        if not long:
            return
        new_ids = {i for p in self.placeholders[:1] for i in p.ids}
        lost = sum(1 for i in long if new_ids and not new_ids.intersection(ids[i].tolist()))
        log.warning(
            "%d training prompt(s) are longer than the text encoder's %d tokens and are cut there (e.g. %r)%s; "
            "shorten the captions or templates",
            len(long),
            tokenizer.model_max_length,
            texts[long[0]][:80] + ("..." if len(texts[long[0]]) > 80 else ""),
            f"; in {lost} the placeholder is cut off, so they teach the token nothing" if lost else "",
        )

    def set_images(self, sizes: list[tuple[int, int]], resolution: int, center_crop: bool) -> None:
        """The training images' (width, height) as loaded, and how they are cropped and resized: SDXL conditions
        on them (`add_time_ids`); SD 1/2 only keep them."""
        self.image_sizes, self.resolution, self.center_crop = list(sizes), resolution, center_crop

    @abstractmethod
    def condition(self, ids: tuple[torch.Tensor, ...], image_idx: torch.Tensor, dtype: torch.dtype) -> Conditioning:
        """The UNet's conditioning for a batch of prompts (`ids`, one tensor per tokenizer) and their images."""
