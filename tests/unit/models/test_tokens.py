"""The deterministic tokenizer and text generator of the simulated backend."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from serve_app.models.backend import ChatMessage
from serve_app.models.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_PRIMING_TOKENS,
    count_chat_tokens,
    count_tokens,
    generate_text,
    tokenize,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", []),
        ("   \n\t ", []),
        ("hi", ["hi"]),
        ("Hello, world!", ["Hell", "o", ",", "worl", "d", "!"]),
        ("a cat sat.", ["a", "cat", "sat", "."]),
        ("internationalization", ["inte", "rnat", "iona", "liza", "tion"]),
        ("x=42;", ["x", "=", "42", ";"]),
        ("it's", ["it", "'", "s"]),
    ],
)
def test_tokenize_examples(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens
    assert count_tokens(text) == len(tokens)


@given(st.text())
def test_count_matches_tokenize(text: str) -> None:
    assert count_tokens(text) == len(tokenize(text))


@given(st.text())
def test_tokens_are_pieces_of_the_text_in_order(text: str) -> None:
    squeezed = "".join(text.split())
    assert "".join(tokenize(text)) == squeezed
    assert all(1 <= len(token) <= 4 for token in tokenize(text))


def test_count_is_bpe_like_on_english() -> None:
    text = (
        "Real-time cost-to-serve prices each request from the live load of the cluster, "
        "so a fuller batch makes every token cheaper to produce."
    )
    words = len(text.split())
    # BPE tokenizers give about 1.3 tokens per English word; accept a generous band.
    assert 1.0 * words <= count_tokens(text) <= 2.0 * words


def test_count_chat_tokens_adds_framing() -> None:
    assert count_chat_tokens([]) == REPLY_PRIMING_TOKENS
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hello, world!")]
    assert count_chat_tokens(messages) == (
        REPLY_PRIMING_TOKENS + 2 * MESSAGE_OVERHEAD_TOKENS + count_tokens("Be brief.") + 6
    )
    assert count_chat_tokens(tuple(messages)) == count_chat_tokens(iter(messages))


def test_generate_text_is_deterministic() -> None:
    assert generate_text(50, seed=7) == generate_text(50, seed=7)
    assert generate_text(50, seed="abc") == generate_text(50, seed="abc")
    assert generate_text(50, seed=7) != generate_text(50, seed=8)
    assert generate_text(0, seed=1) == []
    assert generate_text(-3, seed=1) == []


@given(st.integers(min_value=0, max_value=600), st.integers() | st.text(max_size=20))
def test_generated_text_counts_as_exactly_n_tokens(n: int, seed: int | str) -> None:
    pieces = generate_text(n, seed)
    assert len(pieces) == n
    assert all(count_tokens(piece) == 1 for piece in pieces)
    assert count_tokens("".join(pieces)) == n


def test_generated_text_reads_as_words() -> None:
    text = "".join(generate_text(40, seed=3))
    assert text[0].isupper()
    assert "  " not in text
    assert len(text.split()) >= 20
