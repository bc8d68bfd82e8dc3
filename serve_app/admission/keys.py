"""Redis key names. Every key of a tenant carries the hash tag `{tenant}`, so each Lua
script touches one Redis Cluster slot."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime

PREFIX = "rtcts:adm"


def month_of(now_s: float) -> str:
    """The calendar month (UTC) of a time: the budget's period, in Redis's month keys and
    in the local fail-open limiter alike. (Read per request: formatting a datetime is
    1-2% of the ingress's CPU, so the month is found once per hour, which never spans
    two months: a UTC month starts on a whole hour.)"""
    return _month_of_hour(int(now_s // 3600))


@functools.lru_cache(maxsize=16)
def _month_of_hour(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m")


@dataclass(frozen=True, slots=True)
class TenantKeys:
    tenant_id: str

    def _key(self, name: str) -> str:
        return f"{PREFIX}:{{{self.tenant_id}}}:{name}"

    @property
    def requests(self) -> str:
        return self._key("req")

    def window(self, name: str) -> str:
        """A sliding window of counted calls: "req" (requests) or "quote" (quotes)."""
        return self._key(name)

    @property
    def tokens(self) -> str:
        return self._key("tok")

    def month(self, month: str) -> str:
        return self._key(f"month:{month}")

    @property
    def reserved(self) -> str:
        return self._key("reserved")

    @property
    def reservations(self) -> str:
        return self._key("resv")

    @property
    def reservation_data(self) -> str:
        return self._key("resvdata")

    @property
    def output_history(self) -> str:
        return self._key("outhist")

    @property
    def settled(self) -> str:
        return self._key("settled")
