"""LLM request traces: load one from CSV and compress it in time (no I/O but reading).

The format is that of the Azure LLM inference trace 2023 (Microsoft's Azure Public
Dataset, CC BY 4.0; Patel et al., "Splitwise: Efficient generative LLM inference using
phase splitting", ISCA 2024):

    TIMESTAMP,ContextTokens,GeneratedTokens
    2023-11-16 18:15:46.6805900,374,44

Other traces work when they have an arrival time, prompt tokens and output tokens
under one of the names in `COLUMN_NAMES` (matched without regard to case). An arrival
time is either a date and time (`2023-11-16 18:15:46.68`, a `T` between them allowed,
up to 9 fractional digits: more than `datetime` parses, so the fraction is read by
hand) or a number of seconds. A trace becomes a list of `TraceRequest`s ordered by
arrival, with offsets in seconds from the first arrival.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from serve_app.errors import TraceError as TraceError

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
"""The Azure trace's names of (arrival time, prompt tokens, output tokens)."""
COLUMN_NAMES: tuple[tuple[str, ...], ...] = (
    ("TIMESTAMP", "timestamp", "arrival_time", "arrival_s", "time", "time_s"),
    ("ContextTokens", "input_tokens", "prompt_tokens", "context_tokens", "num_prefill_tokens"),
    (
        "GeneratedTokens",
        "output_tokens",
        "completion_tokens",
        "generated_tokens",
        "num_decode_tokens",
    ),
)
"""Accepted names of each column, the Azure trace's first (case does not matter)."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace: when it arrives and how many tokens it has."""

    offset_s: float
    """Seconds after the first arrival of the trace."""
    prompt_tokens: int
    output_tokens: int


def parse_timestamp(text: str) -> float:
    """Seconds of `2023-11-16 18:15:46.6805900` since the epoch (naive, read as UTC), or
    of a plain number of seconds (`12.5`)."""
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    whole, _, fraction = stripped.replace("T", " ", 1).partition(".")
    try:
        parsed = datetime.strptime(whole, TIMESTAMP_FORMAT)
    except ValueError:
        raise ValueError(f"not a timestamp: {text!r}") from None
    if fraction and not fraction.isdigit():
        raise ValueError(f"not a timestamp: {text!r}")
    seconds = parsed.replace(tzinfo=UTC).timestamp()
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _column_indexes(header: Sequence[str], source: str) -> list[int]:
    names = [name.strip().lower() for name in header]
    found: list[int] = []
    missing: list[str] = []
    for accepted in COLUMN_NAMES:
        index = next((names.index(n.lower()) for n in accepted if n.lower() in names), None)
        if index is None:
            missing.append(accepted[0])
        else:
            found.append(index)
    if missing:
        others = "; ".join(
            f"{names[0]}: {', '.join(names[1:])}" for names in COLUMN_NAMES if names[0] in missing
        )
        raise TraceError(
            f"{source}: missing column(s) {', '.join(missing)} (also accepted: {others})"
        )
    return found


def parse_trace(rows: Iterable[Sequence[str]], source: str = "<trace>") -> list[TraceRequest]:
    """Requests of a trace's CSV rows (the header row first), ordered by arrival."""
    iterator = iter(rows)
    header = next(iterator, None)
    if header is None:
        raise TraceError(f"{source}: empty file")
    at = _column_indexes(header, source)
    arrivals: list[tuple[float, int, int]] = []
    for line, row in enumerate(iterator, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            when = parse_timestamp(row[at[0]])
            prompt, output = int(row[at[1]]), int(row[at[2]])
        except (IndexError, ValueError) as exc:
            raise TraceError(f"{source}:{line}: {exc or 'missing value'}") from None
        if prompt < 0 or output < 0:
            raise TraceError(f"{source}:{line}: token counts must be 0 or more")
        arrivals.append((when, prompt, output))
    if not arrivals:
        raise TraceError(f"{source}: no requests")
    arrivals.sort(key=lambda a: a[0])
    first = arrivals[0][0]
    return [TraceRequest(when - first, prompt, output) for when, prompt, output in arrivals]


def load_trace(path: Path) -> list[TraceRequest]:
    """Requests of the CSV trace at `path`; `TraceError` (one line) when it cannot be read."""
    try:
        with path.open(newline="", encoding="utf-8") as file:
            return parse_trace(csv.reader(file), str(path))
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a text (UTF-8) CSV file") from None


def compress(
    requests: Iterable[TraceRequest], speed: float, duration_s: float | None = None
) -> list[TraceRequest]:
    """The trace played `speed` times faster (offset / speed), cut at `duration_s`
    (compressed seconds; requests arriving after it are left out)."""
    if not speed > 0:
        raise ValueError(f"speed must be more than 0, got {speed}")
    result = []
    for r in requests:
        offset = r.offset_s / speed
        if duration_s is not None and offset > duration_s:
            continue
        result.append(TraceRequest(offset, r.prompt_tokens, r.output_tokens))
    return result
