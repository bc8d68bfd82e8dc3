"""The meter stream's entry format: one entry per batch of verified meters (pure).

Contract between the writer (`stream.py`), the spool (`spool.py`) and the aggregator
(`ledger.py`, `lua/fold.lua`); keep it exact. An entry has three fields:

    b   batch id: 32 lowercase hex characters, random, fixed when the batch is made and
        kept through spooling and replay. The aggregator folds each batch id once, so a
        batch appended twice (a timed-out flush that did land, then its spool replay) is
        counted once.
    s   the fold summary: what the aggregator needs, pre-summed by the writer. Groups
        joined by ";", each "tenant,customer,ended_s,billable,failed,billed,tokens,credit"
        (integers; `billed`, `tokens`, `credit` summed over the group's billable meters,
        `ended_s` the meters' end second, so each group falls in exactly one window).
        Tenant ids (`[A-Za-z0-9._:-]`) and Stripe customer ids (`cus_[A-Za-z0-9_]`) never
        contain "," or ";".
    m   the verified meters themselves, the record of each request for audits and
        disputes: a JSON array whose first element is the list of field names and every
        further element one meter's values in that order (`decode_meters`; a reader
        ignores fields it does not know, so writers can add fields during a rollout).

Why batches and not one entry per meter: a batch costs Redis one XADD, one read and one
acknowledgement, and the fold one dedup check and a few sums per tenant, instead of all
of that per meter (docs/decisions.md, "Batch entries"). The writer makes a batch per
flush and shard, so `s` and `m` always describe exactly the same meters.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
import re
import typing
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serve_app.metering.meter import Meter

F_BATCH, F_SUMMARY, F_METERS = "b", "s", "m"

Group = tuple[str, str, int, int, int, int, int, int]
"""One summary group: tenant, customer, ended_s, billable, failed, billed micro-USD,
tokens, credit micro-USD."""

_BATCH_ID = re.compile(r"[0-9a-f]{32}")
_GROUP = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9._:-]*),(cus_[A-Za-z0-9_]+|),(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)"
)
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_CUSTOMER = re.compile(r"cus_[A-Za-z0-9_]+")

_FIELDS = tuple(f.name for f in dataclasses.fields(Meter))
_ROW = operator.attrgetter(*_FIELDS)
_TENANT_I, _CUSTOMER_I, _ENDED_I, _BILLABLE_I, _BILLED_I, _CREDIT_I, _INPUT_I, _OUTPUT_I = (
    _FIELDS.index(name)
    for name in (
        "tenant_id",
        "stripe_customer_id",
        "ended_at_ms",
        "billable",
        "billed_micro",
        "credit_micro",
        "input_tokens",
        "output_tokens",
    )
)
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def new_batch_id() -> str:
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class MeterBatch:
    """One stream entry, encoded: the same bytes go to Redis and to the spool."""

    shard: int
    batch_id: str
    summary: str
    meters: bytes
    """The JSON array of the meters."""
    count: int

    def fields(self) -> dict[str, str | bytes]:
        return {F_BATCH: self.batch_id, F_SUMMARY: self.summary, F_METERS: self.meters}

    def spool_line(self) -> bytes:
        """ "shard TAB batch id TAB summary TAB meters count TAB meters JSON" and a newline
        (JSON escapes tabs and newlines inside strings, so the line splits cleanly)."""
        head = f"{self.shard}\t{self.batch_id}\t{self.summary}\t{self.count}\t"
        return head.encode() + self.meters + b"\n"

    @classmethod
    def from_spool_line(cls, line: bytes) -> MeterBatch:
        """Raises ValueError for a line that is not a whole batch (a torn last line)."""
        if not line.endswith(b"\n"):
            raise ValueError("a spool line without its newline (torn by a crash)")
        parts = line[:-1].split(b"\t", 4)
        if len(parts) != 5:
            raise ValueError("a spool line has 5 tab-separated fields")
        shard, batch_id, summary, count, meters = parts
        text = summary.decode()
        if not _BATCH_ID.fullmatch(batch_id.decode()) or parse_summary(text) is None:
            raise ValueError("a spool line with a malformed batch id or summary")
        table = json.loads(meters)
        if not isinstance(table, list) or len(table) != int(count) + 1:
            raise ValueError("a spool line whose meters do not match its count")
        return cls(int(shard), batch_id.decode(), text, meters, int(count))


STREAM_PREFIX = "rtcts:meters:"


def stream_key(shard: int) -> str:
    """The stream of shard `shard` (a hash tag per shard: one Redis Cluster slot each)."""
    return f"{STREAM_PREFIX}{{s{shard}}}"


def shard_of(tenant_id: str, shards: int) -> int:
    """The shard a tenant's meters go to: `crc32(tenant_id) % shards`."""
    return zlib.crc32(tenant_id.encode("utf-8")) % shards


def encode_batches(meters: Sequence[Meter], shards: int) -> tuple[list[MeterBatch], list[Meter]]:
    """One entry per shard present in `meters`, and the meters that could not be encoded
    (a programming error in one meter must not cost its batch)."""
    by_shard: dict[int, list[Meter]] = {}
    if shards == 1:
        by_shard[0] = list(meters)
    else:
        for meter in meters:
            by_shard.setdefault(shard_of(meter.tenant_id, shards), []).append(meter)
    batches: list[MeterBatch] = []
    bad: list[Meter] = []
    for shard, items in by_shard.items():
        try:
            batches.append(encode_batch(items, shard))
            continue
        except (TypeError, ValueError, AttributeError):
            pass
        kept: list[Meter] = []
        for meter in items:
            try:
                encode_batch([meter], shard)
            except (TypeError, ValueError, AttributeError):
                bad.append(meter)
            else:
                kept.append(meter)
        batches.append(encode_batch(kept, shard))
    return batches, bad


def encode_batch(
    meters: Sequence[Meter], shard: int = 0, batch_id: str | None = None
) -> MeterBatch:
    """The entry for `meters` (all of one shard). Raises ValueError or TypeError when a
    meter cannot be carried (a programming error: the writer then keeps the others).

    The writer's hot path (every verified meter passes here once): one attribute getter
    per meter, the sums per group, one JSON encoding of all rows; names and types are
    checked per group, where a bad meter shows up too (a float turns its sums to floats)."""
    rows = list(map(_ROW, meters))
    groups: dict[tuple[str, str, int], list[int]] = {}
    for row in rows:
        key = (row[_TENANT_I], row[_CUSTOMER_I], row[_ENDED_I] // 1000)
        sums = groups.get(key)
        if sums is None:
            sums = groups[key] = [0, 0, 0, 0, 0]
        if row[_BILLABLE_I]:
            billed, credit = row[_BILLED_I], row[_CREDIT_I]
            tokens = row[_INPUT_I] + row[_OUTPUT_I]
            if billed < 0 or credit < 0 or tokens < 0:
                raise ValueError(f"meter {row[0]} has a negative amount")
            sums[0] += 1
            sums[2] += billed
            sums[3] += tokens
            sums[4] += credit
        else:
            sums[1] += 1
    parts = []
    for (tenant, customer, second), sums in groups.items():
        if not (
            type(tenant) is str
            and _TENANT.fullmatch(tenant)
            and (customer == "" or _CUSTOMER.fullmatch(customer))
            and type(second) is int
            and second >= 0
            and all(type(v) is int for v in sums)
        ):
            raise ValueError(f"tenant {tenant!r}: a meter has a field the stream cannot carry")
        parts.append(
            f"{tenant},{customer},{second},{sums[0]},{sums[1]},{sums[2]},{sums[3]},{sums[4]}"
        )
    meters_json = _ENCODER.encode([_FIELDS, *rows]).encode()
    return MeterBatch(shard, batch_id or new_batch_id(), ";".join(parts), meters_json, len(rows))


def parse_summary(summary: str) -> list[Group] | None:
    """The groups of a summary, checked; None when it is not one."""
    if not summary:
        return []
    groups: list[Group] = []
    for text in summary.split(";"):
        match = _GROUP.fullmatch(text)
        if match is None:
            return None
        t, c, *numbers = match.groups()
        s, n, f, b, k, r = (int(x) for x in numbers)
        groups.append((t, c, s, n, f, b, k, r))
    return groups


def batch_item(fields: dict[Any, Any]) -> tuple[str, list[Group]] | None:
    """What the aggregator folds of an entry read from the stream (batch id and summary
    groups); None when the entry is not a batch."""
    batch_id = _text(fields.get(F_BATCH.encode(), fields.get(F_BATCH)))
    summary = _text(fields.get(F_SUMMARY.encode(), fields.get(F_SUMMARY)))
    if batch_id is None or summary is None or not _BATCH_ID.fullmatch(batch_id):
        return None
    groups = parse_summary(summary)
    return None if groups is None else (batch_id, groups)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


# -- reading the meters back (`m`) -----------------------------------------------------


def _field_checks() -> dict[str, tuple[type, ...]]:
    allowed = {str: (str,), int: (int,), float: (int, float), bool: (bool,), type(None): ()}
    checks: dict[str, tuple[type, ...]] = {}
    for name, hint in typing.get_type_hints(Meter).items():
        options = typing.get_args(hint) or (hint,)
        types: tuple[type, ...] = ()
        for option in options:
            types += allowed.get(option, (object,))
        checks[name] = types + ((type(None),) if type(None) in options else ())
    return checks


_CHECKS = _field_checks()
_FLOATS = frozenset(name for name, types in _CHECKS.items() if float in types)
_REQUIRED = frozenset(f.name for f in dataclasses.fields(Meter) if f.default is dataclasses.MISSING)


def meter_from_object(obj: Any) -> Meter:
    """A meter from its decoded JSON object. Raises ValueError if it is not one (a
    missing field, a field of the wrong type). Unknown fields are ignored, so a newer
    writer does not break an older reader during a rollout."""
    if not isinstance(obj, dict):
        raise ValueError(f"a meter is a JSON object, not {type(obj).__name__}")
    missing = _REQUIRED - obj.keys()
    if missing:
        raise ValueError(f"meter without {', '.join(sorted(missing))}")
    values: dict[str, Any] = {}
    for name, types in _CHECKS.items():
        if name not in obj:
            continue
        value = obj[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"meter field {name} has type {type(value).__name__}")
        if name in _FLOATS and isinstance(value, int):
            value = float(value)
        values[name] = value
    return Meter(**values)


def decode_meters(data: bytes | str) -> list[Meter]:
    """The meters of an entry's `m` field, in order. Raises ValueError if any is not one."""
    table = json.loads(data)
    if not isinstance(table, list) or not table or not isinstance(table[0], list):
        raise ValueError("an entry's meters are a JSON array: field names, then rows")
    names = table[0]
    meters = []
    for row in table[1:]:
        if not isinstance(row, list) or len(row) != len(names):
            raise ValueError("a meter row does not match the field names")
        meters.append(meter_from_object(dict(zip(names, row, strict=True))))
    return meters
