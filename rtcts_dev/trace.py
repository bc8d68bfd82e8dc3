"""LLM request traces: load one from CSV and compress it in time (pure, no I/O but reading).

The format is that of the Azure LLM inference trace 2023 (`../shared/data/`):

    TIMESTAMP,ContextTokens,GeneratedTokens
    2023-11-16 18:15:46.6805900,374,44

TIMESTAMP has up to 7 fractional digits (more than `datetime` parses), so the fraction
is read by hand. A trace becomes a list of `TraceRequest`s ordered by arrival, with
offsets in seconds from the first arrival.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from serve_app.errors import RtctsError

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceError(RtctsError):
    """A trace file is missing or malformed (the message names the file and line)."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace: when it arrives and how many tokens it has."""

    offset_s: float
    """Seconds after the first arrival of the trace."""
    prompt_tokens: int
    output_tokens: int


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch (naive, read as UTC) of `2023-11-16 18:15:46.6805900`."""
    whole, _, fraction = text.strip().partition(".")
    try:
        parsed = datetime.strptime(whole, TIMESTAMP_FORMAT)
    except ValueError:
        raise ValueError(f"not a timestamp: {text!r}") from None
    if fraction and not fraction.isdigit():
        raise ValueError(f"not a timestamp: {text!r}")
    seconds = parsed.replace(tzinfo=UTC).timestamp()
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def parse_trace(rows: Iterable[Sequence[str]], source: str = "<trace>") -> list[TraceRequest]:
    """Requests of a trace's CSV rows (the header row first), ordered by arrival."""
    iterator = iter(rows)
    header = next(iterator, None)
    if header is None:
        raise TraceError(f"{source}: empty file")
    names = [name.strip() for name in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise TraceError(f"{source}: missing column(s) {', '.join(missing)}")
    at = [names.index(c) for c in COLUMNS]
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
