"""A tiny deterministic tokenizer and text generator for the simulated backend.

No vocabulary file, no download: a token is a run of word characters (`\\w+`) or one
other non-space character (`[^\\w\\s]`), and a word longer than `PIECE_CHARS` (4)
characters counts as one token per started 4-character piece. This approximates BPE
tokenizers of the GPT/Llama family on English text (about 4 characters, or 0.75 words,
per token; punctuation is its own token), which is all rtcts needs: counts that are
real (they grow with the text), cheap, and the same on every machine and every run.

`count_chat_tokens` adds a fixed framing overhead per message and per reply, as chat
templates do (OpenAI documents ~3-4 tokens per message and 3 to prime the reply). Tool
definitions are prompt too (chat templates render them into it): their JSON is counted;
an assistant's tool calls count their function names and arguments; an image counts
`IMAGE_TOKENS` (OpenAI's base for a low-detail image). An engine that reports its own
usage is billed on its figures; these are the ingress's estimate and the simulation's.

`generate_text` makes the simulated model's output: `n` token strings that, joined,
count as exactly `n` tokens under `count_tokens`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

from serve_app.models.backend import ChatMessage

PIECE_CHARS = 4
"""A word longer than this is split into pieces of this many characters."""
MESSAGE_OVERHEAD_TOKENS = 4
"""Framing tokens of one chat message (role and separators)."""
REPLY_PRIMING_TOKENS = 3
"""Tokens that prime the assistant's reply, once per request."""
IMAGE_TOKENS = 85
"""Prompt tokens of one image (OpenAI's figure for a low-detail image)."""

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


def count_chat_tokens(
    messages: Iterable[ChatMessage], tools: Iterable[Mapping[str, Any]] = ()
) -> int:
    """Prompt tokens of a chat: each message's content (its tool calls and images too)
    plus its framing, the priming, and the JSON of the tool definitions."""
    total = REPLY_PRIMING_TOKENS + sum(_message_tokens(m) for m in messages)
    tools = tuple(tools)
    if tools:
        total += count_tokens(json.dumps(tools, separators=(",", ":")))
    return total


def _message_tokens(message: ChatMessage) -> int:
    tokens = MESSAGE_OVERHEAD_TOKENS + count_tokens(message.content)
    for call in message.tool_calls:
        function = call.get("function")
        if isinstance(function, Mapping):
            tokens += count_tokens(str(function.get("name", "")))
            tokens += count_tokens(str(function.get("arguments", "")))
    for part in message.parts:
        if part.get("type") == "image_url":
            tokens += IMAGE_TOKENS
    return tokens


def count_prompt_tokens(prompts: Iterable[str]) -> int:
    """Prompt tokens of text completions: each prompt's tokens (no chat framing)."""
    return sum(count_tokens(prompt) for prompt in prompts)


def split_tokens(text: str) -> list[str]:
    """`text` cut into pieces of one token each that join back into `text` exactly
    (whitespace goes with the token after it; a last run of whitespace with the one
    before). Any prefix of the pieces, joined, counts as that many tokens."""
    pieces: list[str] = []
    start = 0
    for match in _TOKEN_RE.finditer(text):
        word = match.group()
        lead = text[start : match.start()]
        cuts = [word[i : i + PIECE_CHARS] for i in range(0, len(word), PIECE_CHARS)]
        cuts[0] = lead + cuts[0]
        pieces.extend(cuts)
        start = match.end()
    if start < len(text):
        if pieces:
            pieces[-1] += text[start:]
        else:
            pieces.append(text[start:])
    return pieces


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
