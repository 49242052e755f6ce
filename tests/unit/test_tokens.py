"""Placeholder rows start from the initializer: one word for all vectors, or several words in order (A1111)."""

from __future__ import annotations

import logging

import pytest
import torch

from textinv.errors import TextinvError
from textinv.models import TOY_MODEL_DIR
from textinv.tokens import add_placeholder_tokens, initializer_id, initializer_ids, install_placeholder_embedding


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TOY_MODEL_DIR / "tokenizer")


def _encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=8, intermediate_size=8, num_attention_heads=2, num_hidden_layers=1)
    return CLIPTextModel(config)


@pytest.mark.parametrize(
    "text,num_vectors,expected",
    [
        ("orange star", 4, ["orange", "orange", "star", "star"]),
        ("orange star", 2, ["orange", "star"]),
        ("orange star", 3, ["orange", "orange", "star"]),  # i * 2 // 3 = 0, 0, 1
        ("big orange star", 2, ["big", "orange"]),  # i * 3 // 2 = 0, 1: A1111 skips "star"
        ("star", 3, ["star", "star", "star"]),  # one word: every vector, as diffusers' script
    ],
)
def test_words_start_the_vectors_in_order_by_a1111s_rule(tokenizer, text, num_vectors, expected):
    assert initializer_ids(tokenizer, text, num_vectors) == tuple(initializer_id(tokenizer, w) for w in expected)


def test_words_that_start_no_vector_are_named_in_a_warning(tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        initializer_ids(tokenizer, "orange star", 1)
    assert "'star'" in caplog.text and "--num_vectors" in caplog.text


def test_a_word_that_is_not_one_token_is_one_line_naming_it(tokenizer):
    with pytest.raises(TextinvError) as info:
        initializer_ids(tokenizer, "orange xqzvbnm", 2)
    assert "'xqzvbnm'" in str(info.value) and "\n" not in str(info.value)


def test_the_rows_start_as_the_words_rows_and_one_word_matches_the_single_id_path(tokenizer):
    enc = _encoder()
    base = enc.get_input_embeddings().weight.detach().clone()
    placeholder = add_placeholder_tokens(tokenizer, "<two-words>", 4)
    rows = install_placeholder_embedding(enc, tokenizer, placeholder, initializer_ids(tokenizer, "orange star", 4))
    orange, star = initializer_id(tokenizer, "orange"), initializer_id(tokenizer, "star")
    assert torch.equal(rows.rows.detach(), base[[orange, orange, star, star]])
    one_word = install_placeholder_embedding(_encoder(), tokenizer, placeholder, initializer_ids(tokenizer, "star", 4))
    as_before = install_placeholder_embedding(_encoder(), tokenizer, placeholder, star)
    assert torch.equal(one_word.rows, as_before.rows)
