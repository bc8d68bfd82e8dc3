"""`rtcts demo` and `rtcts_dev.trace`: trace parsing and compression, prompt synthesis,
the stats aggregator, the renderers, the dry run, and one whole run on a mock transport
(no network, no sleeps)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from rtcts_dev.demo import (
    DECISIONS,
    MAX_PROMPT_TOKENS,
    TRACE_RELATIVE,
    DemoError,
    DemoOptions,
    DemoStats,
    Outcome,
    chat_body,
    check_server,
    describe_plan,
    find_trace,
    outcome_of,
    plan_requests,
    prompt_tokens_sent,
    render_summary,
    render_table,
    resolve_trace,
    run_demo,
    synthetic_prompt,
)
from rtcts_dev.trace import (
    TraceError,
    TraceRequest,
    compress,
    load_trace,
    parse_timestamp,
)
from serve_app.cli import main
from serve_app.models.backend import ChatMessage
from serve_app.models.tokens import count_chat_tokens

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _csv(tmp_path: Path, rows: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + rows, encoding="utf-8")
    return path


# --- trace ---------------------------------------------------------------------------


def test_timestamp_with_seven_fractional_digits() -> None:
    whole = parse_timestamp("2023-11-16 18:15:46")
    assert parse_timestamp("2023-11-16 18:15:46.6805900") - whole == pytest.approx(0.68059)
    assert parse_timestamp("2023-11-16 18:15:46.5") - whole == pytest.approx(0.5)
    assert parse_timestamp("2023-11-16 18:15:47") - whole == pytest.approx(1.0)


@pytest.mark.parametrize("text", ["", "yesterday", "2023-11-16 18:15:46.x1", "2023-11-16"])
def test_bad_timestamp_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a timestamp"):
        parse_timestamp(text)


def test_load_trace_offsets_from_first_arrival_in_arrival_order(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "\n"
        "2023-11-16 18:16:46.6805900,91,16\n",
    )
    trace = load_trace(path)
    assert [(r.prompt_tokens, r.output_tokens) for r in trace] == [(374, 44), (396, 109), (91, 16)]
    assert trace[0].offset_s == 0.0
    assert trace[1].offset_s == pytest.approx(4.314579)
    assert trace[2].offset_s == pytest.approx(60.0)


def test_load_trace_tolerates_column_order(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "GeneratedTokens,TIMESTAMP,ContextTokens\n7,2023-11-16 18:15:46.0,100\n", encoding="utf-8"
    )
    assert load_trace(path) == [TraceRequest(0.0, 100, 7)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("TIMESTAMP,ContextTokens\n", "missing column(s) GeneratedTokens"),
        (HEADER, "no requests"),
        (HEADER + "2023-11-16 18:15:46.0,10,5\n2023-11-16 18:15:47.0,ten,5\n", ":3: "),
        (HEADER + "2023-11-16 18:15:46.0,10\n", ":2: "),
        (HEADER + "2023-11-16 18:15:46.0,-1,5\n", ":2: token counts"),
    ],
)
def test_malformed_trace_is_one_line_naming_the_file(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TraceError) as info:
        load_trace(path)
    text = str(info.value)
    assert text.startswith(str(path))
    assert message in text
    assert "\n" not in text


def test_missing_trace_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read the trace"):
        load_trace(tmp_path / "nope.csv")


def test_compress_divides_offsets_and_cuts_at_duration() -> None:
    trace = [TraceRequest(0.0, 1, 1), TraceRequest(10.0, 2, 2), TraceRequest(100.0, 3, 3)]
    assert compress(trace, 10) == [
        TraceRequest(0.0, 1, 1),
        TraceRequest(1.0, 2, 2),
        TraceRequest(10.0, 3, 3),
    ]
    assert [r.prompt_tokens for r in compress(trace, 10, duration_s=5)] == [1, 2]
    assert [r.prompt_tokens for r in compress(trace, 0.5, duration_s=20)] == [1, 2]
    with pytest.raises(ValueError, match="speed"):
        compress(trace, 0)


def test_plan_requests_checks_speed_and_duration() -> None:
    trace = [TraceRequest(0.0, 1, 1)]
    with pytest.raises(DemoError, match="--speed"):
        plan_requests(trace, DemoOptions(speed=0))
    with pytest.raises(DemoError, match="--duration-s"):
        plan_requests(trace, DemoOptions(duration_s=0))


# --- trace location ------------------------------------------------------------------


def _shared_trace(root: Path) -> Path:
    path = root / "repo" / TRACE_RELATIVE
    path.parent.mkdir(parents=True)
    path.write_text(HEADER + "2023-11-16 18:15:46.0,10,5\n", encoding="utf-8")
    return path.resolve()


def test_find_trace_from_cwd_then_repo_root(tmp_path: Path) -> None:
    expected = _shared_trace(tmp_path)
    elsewhere = tmp_path / "other" / "elsewhere"  # its ../shared is other/shared: none
    elsewhere.mkdir(parents=True)
    assert find_trace(tmp_path / "repo", repo_root=elsewhere) == expected
    assert find_trace(elsewhere, repo_root=tmp_path / "repo") == expected
    assert find_trace(elsewhere, repo_root=elsewhere) is None


def test_resolve_trace_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="give one with --trace PATH"):
        resolve_trace(None, tmp_path, repo_root=tmp_path)
    with pytest.raises(DemoError, match="trace not found"):
        resolve_trace(tmp_path / "missing.csv", tmp_path, repo_root=tmp_path)


# --- request bodies ------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [8, 9, 100, 1020, 5999, MAX_PROMPT_TOKENS])
def test_synthetic_prompt_counts_as_the_trace_prompt(tokens: int) -> None:
    text = synthetic_prompt(tokens)
    assert count_chat_tokens([ChatMessage("user", text)]) == tokens


def test_synthetic_prompt_is_capped_and_never_empty() -> None:
    assert count_chat_tokens([ChatMessage("user", synthetic_prompt(14_050))]) == MAX_PROMPT_TOKENS
    assert prompt_tokens_sent(14_050) == MAX_PROMPT_TOKENS
    for tiny in (0, 2, 7):
        assert synthetic_prompt(tiny) != ""
        assert count_chat_tokens([ChatMessage("user", synthetic_prompt(tiny))]) == 8


def test_chat_body_is_an_openai_chat_request() -> None:
    body = chat_body(TraceRequest(1.5, 50, 44), "auto")
    assert body["model"] == "auto"
    assert body["max_tokens"] == 44
    [message] = body["messages"]
    assert message["role"] == "user"
    assert count_chat_tokens([ChatMessage("user", message["content"])]) == 50
    assert chat_body(TraceRequest(0.0, 50, 0), "m")["max_tokens"] == 1
    json.dumps(body)


# --- outcomes and stats --------------------------------------------------------------

SERVED_HEADERS = {
    "x-rtcts-model": "qwen2.5-32b",
    "x-rtcts-decision": "allow",
    "x-rtcts-reason": "best_margin_feasible_candidate",
    "x-rtcts-price-usd": "0.004000",
    "x-rtcts-cost-usd": "0.001000",
    "x-rtcts-margin": "0.7500",
}


def test_outcome_of_a_served_request() -> None:
    outcome = outcome_of(200, SERVED_HEADERS, None, 0.25)
    assert outcome == Outcome(
        200,
        0.25,
        model="qwen2.5-32b",
        decision="allow",
        reason="best_margin_feasible_candidate",
        price_usd=0.004,
        cost_usd=0.001,
        margin=0.75,
    )


def test_outcome_of_a_throttle_and_of_errors() -> None:
    throttled = outcome_of(429, {"retry-after": "3"}, {"error": {"code": "margin_throttled"}}, 0.01)
    assert throttled.decision == "throttle"
    assert throttled.retry_after_s == 3.0
    assert throttled.error == "429 margin_throttled"
    unavailable = outcome_of(503, {}, {"error": {"code": "no_capacity", "message": "x"}}, 0.01)
    assert unavailable.decision is None
    assert unavailable.error == "503 no_capacity"
    assert outcome_of(500, {}, "not json", 0.01).error == "500"


def test_admission_limits_are_throttles_but_not_decisions() -> None:
    limited = outcome_of(429, {"retry-after": "30"}, {"error": {"code": "tokens_limited"}}, 0.01)
    assert limited.decision is None
    assert limited.error == "429 tokens_limited"
    stats = DemoStats()
    stats.record(limited, now=1.0)
    stats.record(outcome_of(429, {}, {"error": {"code": "rate_limited"}}, 0.01), now=1.0)
    stats.record(outcome_of(429, {"retry-after": "2"}, None, 0.01), now=1.0)
    view = stats.view(now=2.0)
    assert view["throttled"] == 3
    assert view["throttled_by"] == {
        "tokens_limited": 1,
        "rate_limited": 1,
        "margin_throttled": 1,
    }
    assert view["decisions"]["throttle"] == 1
    assert view["retry_after_mean_s"] == 16.0  # of the two answers that gave one
    assert view["retry_after_max_s"] == 30.0
    assert view["errors"] == {}


def test_outcome_of_ignores_garbled_headers() -> None:
    outcome = outcome_of(200, {"x-rtcts-price-usd": "abc", "x-rtcts-margin": "nan"}, None, 0.1)
    assert outcome.price_usd == 0.0
    assert outcome.margin is None
    assert outcome.model is None


def _stats() -> DemoStats:
    stats = DemoStats(started_at=100.0)
    for _ in range(6):
        stats.record_sent()
    stats.record_dropped()
    stats.record(outcome_of(200, SERVED_HEADERS, None, 0.2), now=101.0)
    stats.record(
        outcome_of(
            200,
            {
                **SERVED_HEADERS,
                "x-rtcts-model": "llama-3.1-8b",
                "x-rtcts-decision": "accept_below_floor",
                "x-rtcts-reason": "accepted_below_margin_floor",
                "x-rtcts-price-usd": "0.001000",
                "x-rtcts-cost-usd": "0.000900",
                "x-rtcts-margin": "0.1000",
            },
            None,
            0.4,
        ),
        now=103.0,
    )
    stats.record(outcome_of(200, SERVED_HEADERS, None, 0.6), now=108.0)
    stats.record(outcome_of(429, {"retry-after": "2"}, None, 0.01), now=108.5)
    stats.record(Outcome(0, 300.0, error="timeout"), now=109.0)
    return stats


def test_stats_view_totals_margins_and_decisions() -> None:
    view = _stats().view(now=110.0)
    assert view["elapsed_s"] == 10.0
    assert (view["sent"], view["done"], view["in_flight"], view["dropped"]) == (6, 5, 1, 1)
    assert view["served"] == 3
    assert view["revenue_usd"] == pytest.approx(0.009)
    assert view["cost_usd"] == pytest.approx(0.0029)
    assert view["gross_margin"] == pytest.approx((0.009 - 0.0029) / 0.009)
    assert view["mean_margin"] == pytest.approx((0.75 + 0.1 + 0.75) / 3)
    assert list(view["decisions"]) == list(DECISIONS)
    assert view["decisions"] == {
        "allow": 2,
        "reroute": 0,
        "surcharge": 0,
        "accept_below_floor": 1,
        "throttle": 1,
    }
    assert view["reasons"] == {
        "allow/best_margin_feasible_candidate": 2,
        "accept_below_floor/accepted_below_margin_floor": 1,
    }
    assert view["throttled"] == 1
    assert view["retry_after_mean_s"] == 2.0
    assert view["errors"] == {"timeout": 1}
    assert view["latency_s"] == {"p50": 0.4, "p95": 0.6, "p99": 0.6}
    qwen = view["models"]["qwen2.5-32b"]
    assert qwen["served"] == 2
    assert qwen["mean_margin"] == pytest.approx(0.75)
    assert qwen["revenue_usd"] == pytest.approx(0.008)
    json.dumps(view)


def test_rate_counts_completions_in_the_last_window() -> None:
    stats = _stats()
    assert stats.rate(now=110.0, window_s=5.0) == pytest.approx(3 / 5)  # at 108, 108.5, 109
    assert stats.rate(now=200.0) == 0.0
    assert DemoStats(started_at=10.0).rate(now=12.0) == 0.0


def test_unfinished_requests_leave_in_flight() -> None:
    stats = _stats()
    stats.unfinished = 1
    assert stats.view(now=110.0)["in_flight"] == 0


# --- rendering -----------------------------------------------------------------------

CLUSTER: dict[str, Any] = {
    "policy_version": "2026-11-27.1",
    "models": {
        "llama-3.1-8b": {
            "status": "HEALTHY",
            "target_replicas": 1,
            "running_replicas": 1,
            "starting_replicas": 0,
            "predicted": {"queued": 0, "running": 3},
            "cost_usd_per_1m_tokens": 1.352712,
        },
        "qwen2.5-32b": {
            "status": "UPSCALING",
            "target_replicas": 2,
            "running_replicas": 1,
            "starting_replicas": 1,
            "predicted": {"queued": 4, "running": 32},
            "cost_usd_per_1m_tokens": 0.3033,
        },
        "llama-3.1-70b": {
            "status": "HEALTHY",
            "target_replicas": 0,
            "running_replicas": 0,
            "starting_replicas": 0,
            "predicted": {"queued": 0, "running": 0},
        },
    },
}
OPTIONS = DemoOptions(url="http://127.0.0.1:8099", duration_s=40, speed=20)


def test_render_table_joins_cluster_and_demo_stats() -> None:
    table = render_table(_stats().view(now=110.0), CLUSTER, OPTIONS, planned=10)
    lines = table.splitlines()
    assert lines[0] == (
        "rtcts demo  http://127.0.0.1:8099  key rtcts-demo-pro  model auto  speed 20x"
        "  policy 2026-11-27.1"
    )
    assert lines[1] == (
        "elapsed   10.0/40 s  trace +00:03:20  sent 6/10  done 5  in flight 1  req/s 0.6"
        "  p50 0.40 s  p95 0.60 s"
    )
    assert lines[3].split() == [
        "model",
        "status",
        "replicas",
        "queue",
        "$/1M",
        "tok",
        "served",
        "margin",
        "revenue",
        "$",
        "cost",
        "$",
        "p50",
        "s",
    ]
    rows = {line.split()[0]: line.split() for line in lines[4:8]}
    assert rows["llama-3.1-8b"] == [
        "llama-3.1-8b",
        "HEALTHY",
        "1/1/0",
        "3",
        "1.3527",
        "1",
        "10.0%",
        "0.001000",
        "0.000900",
        "0.40",
    ]
    assert rows["qwen2.5-32b"] == [
        "qwen2.5-32b",
        "UPSCALING",
        "2/1/1",
        "36",
        "0.3033",
        "2",
        "75.0%",
        "0.008000",
        "0.002000",
        "0.20",
    ]
    assert rows["llama-3.1-70b"] == [
        "llama-3.1-70b",
        "HEALTHY",
        "0/0/0",
        "0",
        "-",
        "0",
        "-",
        "0.000000",
        "0.000000",
        "-",
    ]
    assert rows["total"] == ["total", "3", "53.3%", "0.009000", "0.002900"]
    assert "decisions: allow 2  reroute 0  surcharge 0  accept_below_floor 1  throttle 1" in lines
    assert lines[-2:] == [
        "throttled (429): 1 (margin_throttled 1; Retry-After mean 2.0 s, max 2 s)",
        "dropped (>256 in flight): 1  errors: timeout x1",
    ]
    assert all(len(line) <= 110 for line in lines)
    assert "\x1b" not in table


def test_render_table_without_cluster_shows_the_demo_models() -> None:
    table = render_table(
        _stats().view(now=110.0), None, OPTIONS, planned=10, cluster_error="GET failed"
    )
    rows = [line.split() for line in table.splitlines() if line.startswith(("qwen", "llama"))]
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("qwen2.5-32b", "-", "-", "-", "-"),
        ("llama-3.1-8b", "-", "-", "-", "-"),
    ]
    assert table.splitlines()[-1] == "cluster: GET failed"
    assert "policy" not in table.splitlines()[0]


def test_render_table_before_any_response() -> None:
    table = render_table(DemoStats(started_at=5.0).view(now=5.0), CLUSTER, OPTIONS, planned=3)
    assert "sent 0/3  done 0  in flight 0  req/s 0.0  p50 - s  p95 - s" in table
    assert "errors: none" in table


def test_render_summary() -> None:
    summary = render_summary(_stats().view(now=110.0), OPTIONS, planned=10)
    lines = summary.splitlines()
    assert lines[0].startswith("rtcts demo summary: 10.0 s at 20x (trace +00:03:20)")
    assert (
        "planned 10  sent 6  served 3  throttled 1  errors 1  dropped 1  unfinished 0" in (lines[1])
    )
    assert "revenue:   $0.009000   cost $0.002900   gross margin 67.8%" in lines[2]
    assert "(mean per-request margin 53.3%)" in lines[2]
    assert "throttles: 1 x 429 (margin_throttled 1), Retry-After mean 2.0 s, max 2 s" in summary
    assert "errors:    timeout x1" in summary
    per_model = [line for line in lines if "served" in line and "gross margin" in line]
    assert per_model[0].split()[0] == "qwen2.5-32b"  # most served first
    assert "(66.7%)" in per_model[0]


# --- dry run -------------------------------------------------------------------------

TINY_TRACE = (
    "2023-11-16 18:15:46.0000000,100,10\n"
    "2023-11-16 18:15:56.0000000,200,20\n"
    "2023-11-16 18:16:06.0000000,9000,30\n"
    "2023-11-16 18:17:46.0000000,400,40\n"
)


def test_describe_plan() -> None:
    trace = [TraceRequest(0.0, 100, 10), TraceRequest(20.0, 9000, 30), TraceRequest(200.0, 4, 4)]
    options = DemoOptions(speed=10, duration_s=5)
    text = describe_plan(trace, plan_requests(trace, options), options)
    assert text.splitlines() == [
        "trace: 3 requests over 200.0 s",
        "would send 2 requests to http://127.0.0.1:8000 (model auto, key rtcts-demo-pro) "
        "in 2.0 s (speed 10x, --duration-s 5; 20.0 s for the whole trace)",
        "mean rate 1.0 req/s; at most 256 in flight",
        "prompt tokens: mean 4550, max 9000 (sent: mean 3050; 1 capped at 6000)",
        "output tokens (max_tokens): mean 20, max 30",
    ]


def test_dry_run_prints_the_plan_and_sends_nothing(tmp_path: Path) -> None:
    path = _csv(tmp_path, TINY_TRACE)
    out = io.StringIO()
    code = run_demo(DemoOptions(trace=path, speed=10, duration_s=3, dry_run=True), out=out)
    assert code == 0
    text = out.getvalue()
    assert f"trace file: {path}" in text
    assert "would send 3 requests" in text
    assert "1 capped at 6000" in text


def test_cli_demo_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _csv(tmp_path, TINY_TRACE)
    assert main(["demo", "--dry-run", "--trace", str(path), "--speed", "60"]) == 0
    out, err = capsys.readouterr()
    assert "would send 4 requests" in out
    assert err == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace", "{missing}"], "rtcts: trace not found: "),
        (["--trace", "{trace}", "--speed", "0"], "rtcts: --speed must be more than 0"),
        (["--trace", "{trace}", "--duration-s", "0"], "rtcts: --duration-s must be more than 0"),
        (["--trace", "{bad}"], "rtcts: "),
    ],
)
def test_cli_demo_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    trace = _csv(tmp_path, TINY_TRACE)
    bad = tmp_path / "bad.csv"
    bad.write_text("no,header\n", encoding="utf-8")
    filled = [a.format(missing=tmp_path / "nope.csv", trace=trace, bad=bad) for a in args]
    assert main(["demo", *filled]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(message)
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert out == ""


# --- against a mock server (httpx.MockTransport: no network) --------------------------


def _server(chat: Any, health: int = 200, cluster: int = 200) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer rtcts-demo-pro"
        if request.url.path == "/healthz":
            return httpx.Response(health, json={"status": "ok"})
        if request.url.path == "/v1/cluster":
            return httpx.Response(cluster, json=CLUSTER)
        assert request.url.path == "/v1/chat/completions"
        response: httpx.Response = chat(json.loads(request.content))
        return response

    return httpx.MockTransport(handle)


def _check(transport: httpx.MockTransport) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(
            base_url="http://rtcts.test",
            transport=transport,
            headers={"authorization": "Bearer rtcts-demo-pro"},
        ) as client:
            await check_server(client, "http://rtcts.test")

    asyncio.run(go())


def test_check_server_explains_what_is_wrong() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(DemoError, match=r"no rtcts answers at http://rtcts.test/healthz.*make run"):
        _check(httpx.MockTransport(refuse))
    with pytest.raises(DemoError, match="healthz answered 503"):
        _check(_server(None, health=503))
    with pytest.raises(DemoError, match="refused the API key"):
        _check(_server(None, cluster=401))
    _check(_server(None))


def test_a_whole_run_on_a_mock_server(tmp_path: Path) -> None:
    # Every arrival at the same instant: the run sends all at once and never sleeps.
    path = _csv(
        tmp_path,
        "2023-11-16 18:15:46.0,100,10\n"
        "2023-11-16 18:15:46.0,200,20\n"
        "2023-11-16 18:15:46.0,300,30\n"
        "2023-11-16 18:15:46.0,400,40\n",
    )
    bodies: list[dict[str, Any]] = []

    def chat(body: dict[str, Any]) -> httpx.Response:
        bodies.append(body)
        if body["max_tokens"] == 30:
            return httpx.Response(
                429,
                headers={"retry-after": "4"},
                json={"error": {"code": "margin_throttled", "message": "later"}},
            )
        if body["max_tokens"] == 40:
            return httpx.Response(503, json={"error": {"code": "no_capacity", "message": "x"}})
        return httpx.Response(200, headers=SERVED_HEADERS, json={"choices": []})

    out = io.StringIO()
    code = run_demo(
        DemoOptions(url="http://rtcts.test", trace=path, duration_s=10),
        out=out,
        transport=_server(chat),
    )
    assert code == 0
    assert sorted(b["max_tokens"] for b in bodies) == [10, 20, 30, 40]
    assert all(b["model"] == "auto" for b in bodies)
    text = out.getvalue()
    assert "\x1b" not in text  # not a terminal: plain tables
    summary = text[text.index("rtcts demo summary") :]
    assert "planned 4  sent 4  served 2  throttled 1  errors 1  dropped 0  unfinished 0" in summary
    assert "revenue:   $0.008000   cost $0.002000   gross margin 75.0%" in summary
    assert "decisions: allow 2  reroute 0  surcharge 0  accept_below_floor 0  throttle 1" in (
        summary
    )
    assert "throttles: 1 x 429 (margin_throttled 1), Retry-After mean 4.0 s, max 4 s" in summary
    assert "errors:    503 no_capacity x1" in summary
    # the last table shows the cluster joined with the served counts
    last_table = text[: text.index("rtcts demo summary")]
    assert "UPSCALING" in last_table
    assert "sent 4/4  done 4  in flight 0" in last_table


def test_a_saturated_run_drops_arrivals(tmp_path: Path) -> None:
    path = _csv(tmp_path, "".join("2023-11-16 18:15:46.0,100,10\n" for _ in range(5)))
    out = io.StringIO()
    run_demo(
        DemoOptions(url="http://rtcts.test", trace=path, max_concurrency=2),
        out=out,
        transport=_server(lambda body: httpx.Response(200, headers=SERVED_HEADERS)),
    )
    assert "sent 2  served 2  throttled 0  errors 0  dropped 3" in out.getvalue()


def test_requests_still_in_flight_after_the_drain_are_unfinished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rtcts_dev.demo.DRAIN_S", 0.0)
    path = _csv(tmp_path, "2023-11-16 18:15:46.0,100,10\n" * 2)

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions":
            await asyncio.Event().wait()  # never answers; cancelled after the drain
        return httpx.Response(200, json=CLUSTER)

    out = io.StringIO()
    code = run_demo(
        DemoOptions(url="http://rtcts.test", trace=path),
        out=out,
        transport=httpx.MockTransport(handle),
    )
    assert code == 0
    assert "sent 2  served 0  throttled 0  errors 0  dropped 0  unfinished 2" in out.getvalue()
