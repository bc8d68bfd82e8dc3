"""A tiny deterministic tokenizer and text generator for the simulated backend.

No vocabulary file, no download: a token is a run of word characters (`\\w+`) or one
other non-space character (`[^\\w\\s]`), and a word longer than `PIECE_CHARS` (4)
characters counts as one token per started 4-character piece. This approximates BPE
tokenizers of the GPT/Llama family on English text (about 4 characters, or 0.75 words,
per token; punctuation is its own token), which is all rtcts needs: counts that are
real (they grow with the text), cheap, and the same on every machine and every run.

`count_chat_tokens` adds a fixed framing overhead per message and per reply, as chat
templates do (OpenAI documents ~3-4 tokens per message and 3 to prime the reply).

`generate_text` makes the simulated model's output: `n` token strings that, joined,
count as exactly `n` tokens under `count_tokens`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from serve_app.models.backend import ChatMessage

PIECE_CHARS = 4
"""A word longer than this is split into pieces of this many characters."""
MESSAGE_OVERHEAD_TOKENS = 4
"""Framing tokens of one chat message (role and separators)."""
REPLY_PRIMING_TOKENS = 3
"""Tokens that prime the assistant's reply, once per request."""

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

# Words of at most PIECE_CHARS characters, so each is exactly one token.
_WORD_LIST = (
    "the a of to and in is it that for on with as was he be at by this had not are but "
    "from or have an they one you were her all she how can said each him two more made "
    "may its long time been call who oil find day did get come way most over much set "
    "run fast gpu data load work cost best real new low high good next"
)
_WORDS = tuple(_WORD_LIST.split())
_PUNCTUATION = (".", ",")
_PUNCTUATION_EVERY = 8
"""About one token in this many is punctuation."""


def tokenize(text: str) -> list[str]:
    """The tokens of `text`: words (split into 4-character pieces) and punctuation marks."""
    tokens: list[str] = []
    for match in _TOKEN_RE.finditer(text):
        word = match.group()
        if len(word) <= PIECE_CHARS:
            tokens.append(word)
        else:
            tokens.extend(word[i : i + PIECE_CHARS] for i in range(0, len(word), PIECE_CHARS))
    return tokens


def count_tokens(text: str) -> int:
    """How many tokens `tokenize(text)` has, without building the list."""
    return sum(-(-len(m.group()) // PIECE_CHARS) for m in _TOKEN_RE.finditer(text))


def count_chat_tokens(messages: Iterable[ChatMessage]) -> int:
    """Prompt tokens of a chat: each message's content plus its framing, plus the priming."""
    return REPLY_PRIMING_TOKENS + sum(
        MESSAGE_OVERHEAD_TOKENS + count_tokens(message.content) for message in messages
    )


def generate_text(n_tokens: int, seed: int | str) -> list[str]:
    """`n_tokens` deterministic token strings; joined they read as words with spaces.

    Every word but the first carries its leading space and punctuation follows a word
    directly, so `count_tokens("".join(generate_text(n, seed))) == n`.
    """
    if n_tokens <= 0:
        return []
    rng = random.Random(seed)
    tokens = [rng.choice(_WORDS).capitalize()]
    previous_is_word = True
    for _ in range(n_tokens - 1):
        if previous_is_word and rng.randrange(_PUNCTUATION_EVERY) == 0:
            tokens.append(rng.choice(_PUNCTUATION))
            previous_is_word = False
        else:
            tokens.append(" " + rng.choice(_WORDS))
            previous_is_word = True
    return tokens
