"""`rtcts demo`: replay a real LLM trace, time-compressed, against a running rtcts and show
a live table of what the cluster and the pricing do with it.

    rtcts run                      # in one terminal (or `make run`)
    rtcts demo --speed 3           # in another: the Azure conversation trace, 3x faster

Each trace request is sent at its compressed arrival time as an OpenAI chat completion
whose prompt counts (under `serve_app.models.tokens`) as the trace's prompt tokens and
whose `max_tokens` is the trace's output tokens. At most `max_concurrency` requests are
in flight; an arrival that finds them all busy is dropped and counted. Every second the
table joins `GET /v1/cluster` (replicas, queue, current cost per 1M tokens) with what
the demo saw in the responses (served, margin, revenue, cost, decisions, throttles).

The pure parts (prompt synthesis, `DemoStats`, `render_table`, `render_summary`,
`describe_plan`) take plain values and dicts, so they are tested without a server.
Everything comes from arguments (`DemoOptions`): the demo reads no environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from serve_app.backtest.trace import TraceRequest, compress, load_trace
from serve_app.errors import RtctsError
from serve_app.models.tokens import MESSAGE_OVERHEAD_TOKENS, REPLY_PRIMING_TOKENS

TRACE_RELATIVE = Path("../shared/data/azure_llm_trace_conv_2023.csv")
"""Where the trace lies, relative to the working directory or to the repository root."""
REPO_ROOT = Path(__file__).resolve().parents[1]

MAX_PROMPT_TOKENS = 6000
"""Longer trace prompts are cut to this, so every request fits the smallest context
window of the default policy (8192 tokens, with the trace's outputs of at most 1000)."""
CHAT_FRAMING_TOKENS = MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS
"""Prompt tokens of a one-message chat beyond its content."""
PROMPT_WORD = "data"
"""A word of one token: the synthetic prompt repeats it."""

MARGIN_THROTTLED = "margin_throttled"
"""Error code of the pricing's throttle decision (other 429s are admission limits)."""
DECISIONS = ("allow", "reroute", "surcharge", "accept_below_floor", "throttle")
RATE_WINDOW_S = 5.0
"""req/s in the table counts the completions of this many last seconds."""
TTY_REFRESH_S = 1.0
PLAIN_REFRESH_S = 5.0
REQUEST_TIMEOUT_S = 300.0
DRAIN_S = 30.0
"""After the last arrival, wait at most this long for the requests still in flight."""
CLUSTER_TIMEOUT_S = 2.0
KEEPALIVE_S = 2.0
"""Idle connections are closed before the server's keep-alive timeout (Serve: 5 s), so
a request never goes out on a connection the server is closing."""
SHARD_CONNECTIONS = 32
"""Connections per httpx client (see `_Shards`)."""
HEALTH_TIMEOUT_S = 5.0

CLEAR = "\x1b[H\x1b[2J"


class DemoError(RtctsError):
    """The demo cannot run as asked (no server, no trace, bad option): one line."""


# ---------------------------------------------------------------------- options, trace


@dataclass(frozen=True)
class DemoOptions:
    url: str = "http://127.0.0.1:8000"
    key: str = "rtcts-demo-pro"
    speed: float = 3.0
    duration_s: float = 180.0
    trace: Path | None = None
    model: str = "auto"
    max_concurrency: int = 256
    dry_run: bool = False


def find_trace(cwd: Path, repo_root: Path = REPO_ROOT) -> Path | None:
    """The default trace: `../shared/data/...` from `cwd`, else from the repository root."""
    for base in (cwd, repo_root):
        candidate = base / TRACE_RELATIVE
        if candidate.is_file():
            return candidate.resolve()
    return None


def resolve_trace(explicit: Path | None, cwd: Path, repo_root: Path = REPO_ROOT) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            raise DemoError(f"trace not found: {explicit}")
        return explicit
    found = find_trace(cwd, repo_root)
    if found is None:
        raise DemoError(
            f"trace not found: {TRACE_RELATIVE} (looked from {cwd} and {repo_root}); "
            "give one with --trace PATH"
        )
    return found


def plan_requests(requests: Sequence[TraceRequest], options: DemoOptions) -> list[TraceRequest]:
    """The requests the demo sends: compressed by `speed`, within `duration_s`."""
    if not options.speed > 0:
        raise DemoError(f"--speed must be more than 0, got {options.speed}")
    if not options.duration_s > 0:
        raise DemoError(f"--duration-s must be more than 0, got {options.duration_s}")
    return compress(requests, options.speed, options.duration_s)


def describe_plan(
    trace: Sequence[TraceRequest], planned: Sequence[TraceRequest], options: DemoOptions
) -> str:
    """What `--dry-run` prints: the trace, what would be sent, and its token mix."""
    span = trace[-1].offset_s if trace else 0.0
    lines = [
        f"trace: {len(trace)} requests over {span:.1f} s",
        f"would send {len(planned)} requests to {options.url} (model {options.model}, "
        f"key {options.key}) in {planned[-1].offset_s if planned else 0.0:.1f} s "
        f"(speed {options.speed:g}x, --duration-s {options.duration_s:g}; "
        f"{span / options.speed:.1f} s for the whole trace)",
    ]
    if planned:
        prompts = [r.prompt_tokens for r in planned]
        outputs = [r.output_tokens for r in planned]
        sent_prompts = [prompt_tokens_sent(p) for p in prompts]
        capped = sum(1 for p in prompts if p > MAX_PROMPT_TOKENS)
        duration = max(planned[-1].offset_s, 1e-9)
        lines += [
            f"mean rate {len(planned) / duration:.1f} req/s; "
            f"at most {options.max_concurrency} in flight",
            f"prompt tokens: mean {_mean(prompts):.0f}, max {max(prompts)} "
            f"(sent: mean {_mean(sent_prompts):.0f}; {capped} capped at {MAX_PROMPT_TOKENS})",
            f"output tokens (max_tokens): mean {_mean(outputs):.0f}, max {max(outputs)}",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- request bodies


def prompt_tokens_sent(prompt_tokens: int) -> int:
    """The prompt tokens the server counts for a trace prompt (capped, at least framing + 1)."""
    return max(CHAT_FRAMING_TOKENS + 1, min(prompt_tokens, MAX_PROMPT_TOKENS))


def synthetic_prompt(prompt_tokens: int) -> str:
    """Message content that makes a one-message chat count as about `prompt_tokens`
    tokens (exactly, for CHAT_FRAMING_TOKENS < prompt_tokens <= MAX_PROMPT_TOKENS)."""
    words = prompt_tokens_sent(prompt_tokens) - CHAT_FRAMING_TOKENS
    return " ".join([PROMPT_WORD] * words)


def chat_body(request: TraceRequest, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": synthetic_prompt(request.prompt_tokens)}],
        "max_tokens": max(1, request.output_tokens),
    }


# ---------------------------------------------------------------------- outcomes, stats


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request got: an HTTP status (0 when none came) and the rtcts headers."""

    status: int
    latency_s: float
    model: str | None = None
    decision: str | None = None
    reason: str | None = None
    price_usd: float = 0.0
    cost_usd: float = 0.0
    margin: float | None = None
    retry_after_s: float | None = None
    error: str | None = None
    """Why it failed: the error `code` of the body, the status, or the transport error."""


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def outcome_of(status: int, headers: Mapping[str, str], body: Any, latency_s: float) -> Outcome:
    """The outcome of an HTTP answer (header names in lower case, as httpx gives them)."""
    if status == 200:
        return Outcome(
            status,
            latency_s,
            model=headers.get("x-rtcts-model"),
            decision=headers.get("x-rtcts-decision"),
            reason=headers.get("x-rtcts-reason"),
            price_usd=_float(headers.get("x-rtcts-price-usd")) or 0.0,
            cost_usd=_float(headers.get("x-rtcts-cost-usd")) or 0.0,
            margin=_float(headers.get("x-rtcts-margin")),
        )
    code = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        raw = body["error"].get("code")
        code = str(raw) if raw else None
    return Outcome(
        status,
        latency_s,
        # A 429 is the pricing's throttle decision (margin_throttled) or an admission
        # limit (rate_limited, tokens_limited): only the first is a decision.
        decision="throttle" if status == 429 and code in (None, MARGIN_THROTTLED) else None,
        retry_after_s=_float(headers.get("retry-after")),
        error=f"{status} {code}" if code else str(status),
    )


@dataclass
class ModelStats:
    served: int = 0
    revenue_usd: float = 0.0
    cost_usd: float = 0.0
    margin_sum: float = 0.0
    margins: int = 0
    latencies: list[float] = field(default_factory=list)


class DemoStats:
    """Everything the demo counts; `view()` gives it as plain dicts for the renderers."""

    def __init__(self, started_at: float = 0.0) -> None:
        self.started_at = started_at
        self.sent = 0
        self.dropped = 0
        self.unfinished = 0
        self.done = 0
        self.throttled = 0
        self.throttled_by: Counter[str] = Counter()
        self.retry_after_sum = 0.0
        self.retry_after_count = 0
        self.retry_after_max = 0.0
        self.decisions: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.models: dict[str, ModelStats] = {}
        self.latencies: list[float] = []
        self._recent: deque[float] = deque()

    def record_sent(self) -> None:
        self.sent += 1

    def record_dropped(self) -> None:
        self.dropped += 1

    def record(self, outcome: Outcome, now: float) -> None:
        self.done += 1
        self._recent.append(now)
        if outcome.decision:
            self.decisions[outcome.decision] += 1
            if outcome.reason:
                self.reasons[f"{outcome.decision}/{outcome.reason}"] += 1
        if outcome.status == 200:
            model = self.models.setdefault(outcome.model or "?", ModelStats())
            model.served += 1
            model.revenue_usd += outcome.price_usd
            model.cost_usd += outcome.cost_usd
            if outcome.margin is not None:
                model.margin_sum += outcome.margin
                model.margins += 1
            model.latencies.append(outcome.latency_s)
            self.latencies.append(outcome.latency_s)
        elif outcome.status == 429:
            self.throttled += 1
            code = (outcome.error or "").removeprefix("429").strip()
            self.throttled_by[code or MARGIN_THROTTLED] += 1
            if outcome.retry_after_s is not None:
                self.retry_after_sum += outcome.retry_after_s
                self.retry_after_count += 1
                self.retry_after_max = max(self.retry_after_max, outcome.retry_after_s)
        else:
            self.errors[outcome.error or str(outcome.status)] += 1

    def rate(self, now: float, window_s: float = RATE_WINDOW_S) -> float:
        """Completions per second over the last `window_s` (or since the start)."""
        while self._recent and self._recent[0] < now - window_s:
            self._recent.popleft()
        span = min(window_s, max(now - self.started_at, 1e-9))
        return len(self._recent) / span

    def view(self, now: float) -> dict[str, Any]:
        revenue = sum(m.revenue_usd for m in self.models.values())
        cost = sum(m.cost_usd for m in self.models.values())
        margins = sum(m.margin_sum for m in self.models.values())
        margin_count = sum(m.margins for m in self.models.values())
        return {
            "elapsed_s": max(0.0, now - self.started_at),
            "sent": self.sent,
            "done": self.done,
            "in_flight": self.sent - self.done - self.unfinished,
            "dropped": self.dropped,
            "unfinished": self.unfinished,
            "rate": self.rate(now),
            "served": sum(m.served for m in self.models.values()),
            "throttled": self.throttled,
            "throttled_by": dict(self.throttled_by.most_common()),
            "retry_after_mean_s": self.retry_after_sum / self.retry_after_count
            if self.retry_after_count
            else None,
            "retry_after_max_s": self.retry_after_max if self.retry_after_count else None,
            "errors": dict(self.errors),
            "decisions": {d: self.decisions.get(d, 0) for d in DECISIONS}
            | {d: n for d, n in self.decisions.items() if d not in DECISIONS},
            "reasons": dict(self.reasons.most_common()),
            "revenue_usd": revenue,
            "cost_usd": cost,
            "gross_margin": (revenue - cost) / revenue if revenue else None,
            "mean_margin": margins / margin_count if margin_count else None,
            "latency_s": _percentiles(self.latencies),
            "models": {
                model_id: {
                    "served": m.served,
                    "revenue_usd": m.revenue_usd,
                    "cost_usd": m.cost_usd,
                    "mean_margin": m.margin_sum / m.margins if m.margins else None,
                    "gross_margin": (m.revenue_usd - m.cost_usd) / m.revenue_usd
                    if m.revenue_usd
                    else None,
                    "latency_s": _percentiles(m.latencies),
                }
                for model_id, m in self.models.items()
            },
        }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95 and p99 (nearest rank), None without values."""
    ordered = sorted(values)

    def rank(p: float) -> float | None:
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99)}


# ---------------------------------------------------------------------- rendering


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: Any, fmt: str = "") -> str:
    if value is None or isinstance(value, bool):
        return "-"
    if isinstance(value, int | float):
        return format(value, fmt)
    return "-"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _clock(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _counts(counts: Mapping[str, int]) -> str:
    return "  ".join(f"{name} {n}" for name, n in counts.items())


def _errors(errors: Mapping[str, int]) -> str:
    if not errors:
        return "none"
    return ", ".join(f"{name} x{n}" for name, n in sorted(errors.items(), key=lambda e: -e[1]))


TABLE_HEADER = (
    f"{'model':<16} {'status':<10} {'replicas':>10} {'queue':>6} {'$/1M tok':>9} "
    f"{'served':>7} {'margin':>7} {'revenue $':>11} {'cost $':>11} {'p50 s':>6}"
)
"""replicas: target/running/starting; queue: queued + running on the replicas;
$/1M tok: the current cost to serve a 1000+1000-token request, per 1M tokens;
margin: mean of the per-request margins."""


def render_table(
    view: Mapping[str, Any],
    cluster: Mapping[str, Any] | None,
    options: DemoOptions,
    *,
    planned: int,
    cluster_error: str | None = None,
) -> str:
    """The live table: a header, one row per model (cluster state joined with the demo's
    own counts), decisions and errors. `view` is `DemoStats.view()`, `cluster` the body
    of `GET /v1/cluster` (None when it has not answered)."""
    elapsed = float(view["elapsed_s"])
    latency = view["latency_s"]
    lines = [
        f"rtcts demo  {options.url}  key {options.key}  model {options.model}  "
        f"speed {options.speed:g}x" + (f"  policy {cluster['policy_version']}" if cluster else ""),
        f"elapsed {elapsed:6.1f}/{options.duration_s:g} s  trace +{_clock(elapsed * options.speed)}"
        f"  sent {view['sent']}/{planned}  done {view['done']}  in flight {view['in_flight']}"
        f"  req/s {view['rate']:.1f}  p50 {_secs(latency['p50'])} s  p95 {_secs(latency['p95'])} s",
        "",
        TABLE_HEADER,
    ]
    ours: Mapping[str, Any] = view["models"]
    theirs: Mapping[str, Any] = (cluster or {}).get("models") or {}
    for model_id in [*theirs, *(m for m in ours if m not in theirs)]:
        live = theirs.get(model_id) or {}
        mine = ours.get(model_id) or {}
        predicted = live.get("predicted") or {}
        replicas = (
            "/".join(
                _num(live.get(k))
                for k in ("target_replicas", "running_replicas", "starting_replicas")
            )
            if live
            else "-"
        )
        queue = (
            _num((predicted.get("queued") or 0) + (predicted.get("running") or 0))
            if predicted
            else "-"
        )
        lines.append(
            f"{model_id:<16.16} {live.get('status', '-'):<10.10} {replicas:>10} {queue:>6} "
            f"{_num(live.get('cost_usd_per_1m_tokens'), '.4f'):>9} "
            f"{mine.get('served', 0):>7} {_pct(mine.get('mean_margin')):>7} "
            f"{_num(mine.get('revenue_usd', 0.0), '.6f'):>11} "
            f"{_num(mine.get('cost_usd', 0.0), '.6f'):>11} "
            f"{_secs((mine.get('latency_s') or {}).get('p50')):>6}"
        )
    lines += [
        f"{'total':<16} {'':<10} {'':>10} {'':>6} {'':>9} {view['served']:>7} "
        f"{_pct(view['mean_margin']):>7} {view['revenue_usd']:>11.6f} "
        f"{view['cost_usd']:>11.6f}",
        "",
        f"decisions: {_counts(view['decisions'])}",
        f"throttled (429): {view['throttled']}"
        + (
            f" ({_counts(view['throttled_by'])}; Retry-After mean "
            f"{view['retry_after_mean_s'] or 0:.1f} s, max {view['retry_after_max_s'] or 0:.0f} s)"
            if view["throttled"]
            else ""
        ),
        f"dropped (>{options.max_concurrency} in flight): {view['dropped']}"
        f"  errors: {_errors(view['errors'])}",
    ]
    if cluster_error:
        lines.append(f"cluster: {cluster_error}")
    return "\n".join(lines)


def render_summary(view: Mapping[str, Any], options: DemoOptions, *, planned: int) -> str:
    """The summary printed at the end: totals, revenue, cost, margins, throttles."""
    latency = view["latency_s"]
    lines = [
        f"rtcts demo summary: {view['elapsed_s']:.1f} s at {options.speed:g}x "
        f"(trace +{_clock(view['elapsed_s'] * options.speed)}), model {options.model}, "
        f"key {options.key}",
        f"  requests:  planned {planned}  sent {view['sent']}  served {view['served']}  "
        f"throttled {view['throttled']}  errors {sum(view['errors'].values())}  "
        f"dropped {view['dropped']}  unfinished {view['unfinished']}",
        f"  revenue:   ${view['revenue_usd']:.6f}   cost ${view['cost_usd']:.6f}   "
        f"gross margin {_pct(view['gross_margin'])}   "
        f"(mean per-request margin {_pct(view['mean_margin'])})",
        f"  decisions: {_counts(view['decisions'])}",
        f"  reasons:   {_counts(view['reasons']) or '-'}",
        f"  latency:   p50 {_secs(latency['p50'])} s  p95 {_secs(latency['p95'])} s  "
        f"p99 {_secs(latency['p99'])} s",
    ]
    if view["throttled"]:
        lines.append(
            f"  throttles: {view['throttled']} x 429 ({_counts(view['throttled_by'])}), "
            f"Retry-After mean {view['retry_after_mean_s'] or 0:.1f} s, "
            f"max {view['retry_after_max_s'] or 0:.0f} s"
        )
    if view["errors"]:
        lines.append(f"  errors:    {_errors(view['errors'])}")
    for model_id, m in sorted(view["models"].items(), key=lambda item: -item[1]["served"]):
        share = m["served"] / view["served"] if view["served"] else 0.0
        lines.append(
            f"  {model_id:<16} served {m['served']:>6} ({share * 100:4.1f}%)  "
            f"revenue ${m['revenue_usd']:.6f}  cost ${m['cost_usd']:.6f}  "
            f"gross margin {_pct(m['gross_margin'])}  p50 {_secs(m['latency_s']['p50'])} s"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- traffic


class _Display:
    """Redraws the table (ANSI, every second) on a terminal, else prints one every 5 s."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.interval_s = TTY_REFRESH_S if tty else PLAIN_REFRESH_S

    def show(self, table: str) -> None:
        if self.tty:
            self.out.write(CLEAR + table + "\n")
        else:
            self.out.write(table + "\n\n")
        self.out.flush()


@dataclass
class _Run:
    options: DemoOptions
    planned: list[TraceRequest]
    stats: DemoStats
    clock: Callable[[], float] = time.monotonic
    cluster: dict[str, Any] | None = None
    cluster_error: str | None = None

    def table(self) -> str:
        return render_table(
            self.stats.view(self.clock()),
            self.cluster,
            self.options,
            planned=len(self.planned),
            cluster_error=self.cluster_error,
        )


async def check_server(client: httpx.AsyncClient, url: str) -> None:
    """Fail with one clear line when nothing answers `/healthz` or the key is refused."""
    hint = "start it first in another terminal with `make run` or `rtcts run`"
    try:
        health = await client.get("/healthz", timeout=HEALTH_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise DemoError(
            f"no rtcts answers at {url}/healthz ({type(exc).__name__}); {hint}"
        ) from None
    if health.status_code != 200:
        raise DemoError(f"{url}/healthz answered {health.status_code}; {hint}")
    try:
        cluster = await client.get("/v1/cluster", timeout=HEALTH_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise DemoError(f"{url}/v1/cluster did not answer ({type(exc).__name__})") from None
    if cluster.status_code == 401:
        raise DemoError(f"{url} refused the API key (401); try --key rtcts-demo-pro")
    if cluster.status_code != 200:
        raise DemoError(f"{url}/v1/cluster answered {cluster.status_code}")


def _client(
    options: DemoOptions, connections: int, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=options.url,
        transport=transport,
        headers={"authorization": f"Bearer {options.key}"},
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=HEALTH_TIMEOUT_S),
        limits=httpx.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=KEEPALIVE_S,
        ),
    )


class _Shards:
    """Several small httpx clients instead of one big one: httpx's pool costs CPU per
    request in proportion to its connections (measured here: 4-5x less client CPU with
    8 clients of 32 connections than with 1 of 256), and the demo shares the machine
    with the server it drives. Each request goes to the client with the fewest in
    flight, so none ever waits for a connection while the semaphore lets it run."""

    def __init__(self, clients: Sequence[httpx.AsyncClient]) -> None:
        self.clients = list(clients)
        self.in_flight = [0] * len(self.clients)

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        index = self.in_flight.index(min(self.in_flight))
        self.in_flight[index] += 1
        try:
            return await self.clients[index].post(path, json=body)
        finally:
            self.in_flight[index] -= 1


async def _send_one(
    shards: _Shards, run: _Run, request: TraceRequest, slots: asyncio.Semaphore
) -> None:
    started = run.clock()
    try:
        response = await shards.post("/v1/chat/completions", chat_body(request, run.options.model))
        try:
            body: Any = response.json() if response.status_code != 200 else None
        except ValueError:
            body = None
        outcome = outcome_of(response.status_code, response.headers, body, run.clock() - started)
    except httpx.TimeoutException:
        outcome = Outcome(0, run.clock() - started, error="timeout")
    except httpx.HTTPError as exc:
        outcome = Outcome(0, run.clock() - started, error=type(exc).__name__)
    finally:
        slots.release()
    run.stats.record(outcome, run.clock())


async def _poll_cluster(client: httpx.AsyncClient, run: _Run) -> None:
    try:
        response = await client.get("/v1/cluster", timeout=CLUSTER_TIMEOUT_S)
        if response.status_code == 200:
            run.cluster, run.cluster_error = response.json(), None
        else:
            run.cluster_error = f"GET /v1/cluster answered {response.status_code}"
    except (httpx.HTTPError, ValueError) as exc:
        run.cluster_error = f"GET /v1/cluster failed ({type(exc).__name__}); last view shown"


async def _display_loop(client: httpx.AsyncClient, run: _Run, display: _Display) -> None:
    while True:
        await _poll_cluster(client, run)
        display.show(run.table())
        await asyncio.sleep(display.interval_s)


async def _drive(shards: _Shards, run: _Run) -> None:
    """Send every planned request at its compressed arrival time; then drain."""
    slots = asyncio.Semaphore(run.options.max_concurrency)
    tasks: set[asyncio.Task[None]] = set()
    start = run.stats.started_at
    try:
        for request in run.planned:
            delay = start + request.offset_s - run.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if slots.locked():
                run.stats.record_dropped()
                continue
            await slots.acquire()
            run.stats.record_sent()
            task = asyncio.create_task(_send_one(shards, run, request, slots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks), timeout=DRAIN_S)
    finally:
        # Past the drain, or stopped (Ctrl-C): what is still in flight is unfinished,
        # not an error (cancelled here, before the clients close under it).
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        run.stats.unfinished += len(pending)


async def _demo(run: _Run, display: _Display, transport: httpx.AsyncBaseTransport | None) -> None:
    options = run.options
    async with contextlib.AsyncExitStack() as stack:
        control = await stack.enter_async_context(_client(options, 2, transport))
        await check_server(control, options.url)
        count = -(-options.max_concurrency // SHARD_CONNECTIONS)
        per_shard = -(-options.max_concurrency // count)
        shards = _Shards(
            [
                await stack.enter_async_context(_client(options, per_shard, transport))
                for _ in range(count)
            ]
        )
        run.stats.started_at = run.clock()
        shower = asyncio.create_task(_display_loop(control, run, display))
        try:
            await _drive(shards, run)
        finally:
            shower.cancel()
            await asyncio.gather(shower, return_exceptions=True)
        await _poll_cluster(control, run)
        display.show(run.table())


def run_demo(
    options: DemoOptions,
    out: TextIO | None = None,
    cwd: Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """`rtcts demo`: dry run, or traffic with the live table and a summary at the end.
    `transport` replaces the network (tests: `httpx.MockTransport`)."""
    out = out or sys.stdout
    path = resolve_trace(options.trace, cwd or Path.cwd())
    if options.max_concurrency < 1:
        raise DemoError(f"--max-concurrency must be at least 1, got {options.max_concurrency}")
    trace = load_trace(path)
    planned = plan_requests(trace, options)
    if options.dry_run:
        print(f"trace file: {path}", file=out)
        print(describe_plan(trace, planned, options), file=out)
        return 0
    run = _Run(options, planned, DemoStats())
    display = _Display(out, tty=out.isatty())
    code = 0
    try:
        asyncio.run(_demo(run, display, transport))
    except KeyboardInterrupt:
        run.stats.unfinished += max(0, run.stats.sent - run.stats.done - run.stats.unfinished)
        code = 130
    view = run.stats.view(run.clock())
    if run.stats.sent or run.stats.dropped:
        print("\n" + render_summary(view, options, planned=len(planned)), file=out, flush=True)
    return code
