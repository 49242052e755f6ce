"""Placeholder tokens: adding them to the tokenizer and training only their embedding rows.

The reference trainer optimises the whole 49k-row embedding matrix and copies the original rows back
after every step. We instead swap the text encoder's token embedding for `PlaceholderEmbedding`, which
keeps the original matrix frozen and holds the new rows as the only trainable parameter: the same
numbers are learned (AdamW is element-wise), with a fraction of the memory and no per-step restore.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from textinv.errors import TextinvError

log = logging.getLogger(__name__)


def placeholder_names(token: str, num_vectors: int) -> list[str]:
    """`<tok>`, `<tok>_1`, ... — the names diffusers' `load_textual_inversion` gives multi-vector tokens."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


@dataclass(frozen=True)
class Placeholder:
    """The new token(s) of a run: their names, ids, and the string that stands for them in prompts."""

    token: str
    names: tuple[str, ...]
    ids: tuple[int, ...]

    @property
    def prompt_string(self) -> str:
        return " ".join(self.names)


def add_placeholder_tokens(tokenizer, token: str, num_vectors: int) -> Placeholder:
    """Add `num_vectors` new tokens; refuse tokens the vocabulary already has."""
    names = placeholder_names(token, num_vectors)
    vocab = tokenizer.get_vocab()
    taken = [n for n in names if n in vocab or f"{n}</w>" in vocab]
    if taken:
        raise TextinvError(
            f"placeholder token {taken[0]!r} is already in the tokenizer's vocabulary; "
            "pick a new string such as '<my-concept>'"
        )
    added = tokenizer.add_tokens(names)
    if added != len(names):
        raise TextinvError(f"could not add placeholder token {token!r} to the tokenizer; pick another string")
    ids = tuple(tokenizer.convert_tokens_to_ids(names))
    if list(ids) != list(range(ids[0], ids[0] + len(ids))):
        raise TextinvError(f"placeholder token ids {ids} are not contiguous; pick another placeholder string")
    return Placeholder(token=token, names=tuple(names), ids=ids)


def initializer_id(tokenizer, word: str) -> int:
    """The id of the single token `word` becomes; anything else is refused, naming the pieces."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [p.replace("</w>", "") for p in tokenizer.convert_ids_to_tokens(ids)]
        raise TextinvError(
            f"--initializer_token {word!r} is {len(ids)} tokens {pieces}, not one; "
            "pick a single common word close to the concept (e.g. 'toy', 'cat', 'painting')"
        )
    return ids[0]


def initializer_ids(tokenizer, text: str, num_vectors: int) -> tuple[int, ...]:
    """The token id each of the `num_vectors` new rows starts from: one word, or several in order.

    AUTOMATIC1111's rule ("Initialization text"): with W words for N vectors, vector i starts as word
    i * W // N, so "orange star" gives orange, orange, star, star for 4 vectors and orange, star for 2;
    one word starts every vector (diffusers' script). With more words than vectors the later ones are
    skipped, as A1111 does (a warning says which). Each word must be one token, as diffusers requires.
    """
    words = text.split()
    if not words:
        raise TextinvError("--initializer_token is empty; give a word close to the concept, e.g. 'toy'")
    ids = [initializer_id(tokenizer, word) for word in words]
    picks = [i * len(words) // num_vectors for i in range(num_vectors)]
    unused = [words[w] for w in range(len(words)) if w not in picks]
    if unused:
        log.warning(
            "--initializer_token %r: %d words for %d vector(s), so %s start(s) no vector (AUTOMATIC1111's rule: "
            "vector i starts as word i*words//vectors); raise --num_vectors to use every word",
            text,
            len(words),
            num_vectors,
            ", ".join(repr(w) for w in unused),
        )
    return tuple(ids[w] for w in picks)


class PlaceholderEmbedding(nn.Module):
    """Token embedding = frozen original matrix, with the placeholder rows taken from a trainable fp32 tensor."""

    def __init__(self, base: nn.Embedding, first_id: int, init_rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.first_id = first_id
        self.rows = nn.Parameter(init_rows.detach().to(torch.float32).clone())

    @property
    def weight(self) -> torch.Tensor:
        # Callers such as `get_input_embeddings().weight` see the base matrix (its dtype and device).
        return self.base.weight

    @property
    def num_rows(self) -> int:
        return self.rows.shape[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        offset = input_ids - self.first_id
        is_new = (offset >= 0) & (offset < self.num_rows)
        # The base matrix is not resized while training, so the new ids may lie past its end: look up
        # row 0 for them instead; `where` then puts the trainable rows in their place.
        out = self.base(input_ids.masked_fill(is_new, 0))
        new = self.rows.to(out.dtype)[offset.clamp(0, self.num_rows - 1)]
        return torch.where(is_new.unsqueeze(-1), new, out)


def install_placeholder_embedding(text_encoder, tokenizer, placeholder: Placeholder, init_id: int | Sequence[int]):
    """Swap in a `PlaceholderEmbedding` whose new rows start as the initializer token's row.

    `init_id`: one id for every row, or one id per row (`initializer_ids`).

    The original matrix is not resized while training: resizing copies all 49k rows into a new matrix
    (and makes every page of the memory-mapped original resident), about 0.3 GB for SD-1.x, to add a
    few rows `PlaceholderEmbedding.rows` holds anyway (measured in bench/RESULTS.md).
    `bake_placeholder_rows` grows it when a full pipeline is saved. Every original weight stays
    bitwise unchanged and frozen; only `PlaceholderEmbedding.rows` trains.
    """
    text_encoder.requires_grad_(False)
    base = text_encoder.get_input_embeddings()
    ids = [init_id] * len(placeholder.ids) if isinstance(init_id, int) else list(init_id)
    if len(ids) != len(placeholder.ids):
        raise TextinvError(f"{len(ids)} initializer ids for {len(placeholder.ids)} placeholder vectors")
    init = base.weight[ids].detach().clone()
    module = PlaceholderEmbedding(base, placeholder.ids[0], init)
    text_encoder.set_input_embeddings(module)
    return module


def bake_placeholder_rows(text_encoder) -> None:
    """Grow the plain embedding matrix, write the learned rows into it and remove the wrapper.

    Used before saving a whole pipeline, whose text encoder must hold the new token's rows.
    """
    module = text_encoder.get_input_embeddings()
    if not isinstance(module, PlaceholderEmbedding):
        return
    text_encoder.set_input_embeddings(module.base)
    needed = module.first_id + module.num_rows
    if module.base.num_embeddings < needed:
        try:  # the new rows are overwritten below, so skip transformers' random mean-resizing init
            text_encoder.resize_token_embeddings(needed, mean_resizing=False)
        except TypeError:  # transformers < 4.46
            text_encoder.resize_token_embeddings(needed)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[module.first_id : needed] = module.rows.to(weight.dtype)


def text_embedding_dim(text_encoder) -> int:
    return int(text_encoder.get_input_embeddings().weight.shape[1])
