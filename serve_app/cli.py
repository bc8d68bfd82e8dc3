"""The `rtcts` command line.

    rtcts policy validate FILE...   check policy files; exit 0 when all are valid
    rtcts policy hash-key KEY       print the SHA-256 a policy stores for an API key
    rtcts price-table [--model M] [--input-tokens N] [--max-tokens N]
                                    the decision for a sample request on each plan
    rtcts run [--policy P] [--port N] [--time-scale X] [--cold-start-scale X]
                                    serve locally until Ctrl-C (what `make run` calls)
    rtcts serve-config [--policy P] the Serve config file of a policy (serve_config.yaml)
    rtcts reconcile [--days N] [--json]
                                    the local billing ledger against Stripe (REDIS_URL)
    rtcts demo [--url U] [--speed X] [--duration-s S] [--dry-run] ...
                                    replay a trace against a running rtcts, live table
    rtcts backtest [--spike] [--policies P,...] [--json] [--html F] [--png F] ...
                                    replay a trace through the pricing policies in
                                    simulated time, no Ray (serve_app/backtest/command.py)

Errors are one line each on stderr with a non-zero exit; never a stack trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from serve_app.backtest.command import add_backtest_command
from serve_app.errors import RtctsError
from serve_app.policy import hash_api_key, load_policy_file
from serve_app.pricing import ClusterSnapshot, PriceBook, PriceRequest
from serve_app.pricing.table import render_price_table, sample_snapshot
from serve_app.settings import Settings

if TYPE_CHECKING:
    from serve_app.metering.reconcile import DriftReport  # imports stripe: only when used


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except RtctsError as exc:
        print(f"rtcts: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtcts", description="Real-Time Cost-to-Serve")
    commands = parser.add_subparsers(title="commands")

    policy = commands.add_parser("policy", help="work with policy files")
    policy_commands = policy.add_subparsers(title="policy commands")
    validate = policy_commands.add_parser("validate", help="validate policy files")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(handler=_validate)
    hash_key = policy_commands.add_parser("hash-key", help="hash an API key for a policy")
    hash_key.add_argument("key", metavar="KEY", help="the API key, or - to read it from stdin")
    hash_key.set_defaults(handler=_hash_key)

    table = commands.add_parser("price-table", help="decide a sample request on every plan")
    table.add_argument("--policy", default=None, help="policy file (env RTCTS_POLICY_PATH)")
    table.add_argument("--model", default="auto", help="model id or route alias")
    table.add_argument("--input-tokens", type=_positive_int, default=1000)
    table.add_argument("--max-tokens", type=_positive_int, default=None)
    table.set_defaults(handler=_price_table)

    run = commands.add_parser("run", help="serve locally until Ctrl-C")
    run.add_argument("--policy", default=None, help="policy file (env RTCTS_POLICY_PATH)")
    run.add_argument("--host", default=None, help="HTTP host (env RTCTS_HTTP_HOST)")
    run.add_argument(
        "--port", type=_positive_int, default=None, help="HTTP port (env RTCTS_HTTP_PORT)"
    )
    run.add_argument(
        "--time-scale",
        type=_non_negative_float,
        default=1.0,
        help="simulated models run this much slower (0.1 = 10x faster; default 1)",
    )
    run.add_argument(
        "--cold-start-scale",
        type=_fraction,
        default=None,
        help="simulated cold starts take this share of the policy's cold_start_s "
        "(default 0.05: 60 s take 3 s; 1 = as long as the policy says); the pricing "
        "always sees the policy's figure",
    )
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo",
        help="replay a time-compressed trace against a running rtcts, with a live table",
        description="Replay ../shared/data/azure_llm_trace_conv_2023.csv, time-compressed, "
        "against an rtcts that is already running (start it first in another terminal with "
        "`make run` or `rtcts run`), and show a live table of models, replicas, queue, "
        "cost per 1M tokens, margins and pricing decisions; a summary at the end.",
    )
    demo.add_argument("--url", default="http://127.0.0.1:8000", help="rtcts (default %(default)s)")
    demo.add_argument("--key", default="rtcts-demo-pro", help="API key (default %(default)s)")
    demo.add_argument(
        "--speed",
        type=_non_negative_float,
        default=3.0,
        help="time compression (default 3: within the pro plan's token limit)",
    )
    demo.add_argument(
        "--duration-s", type=_non_negative_float, default=180.0, help="traffic seconds (180)"
    )
    demo.add_argument("--trace", type=Path, default=None, help="trace CSV (default: shared)")
    demo.add_argument("--model", default="auto", help="model or route alias (default auto)")
    demo.add_argument(
        "--max-concurrency", type=_positive_int, default=256, help="in flight at most (256)"
    )
    demo.add_argument("--dry-run", action="store_true", help="only print what would be sent")
    demo.set_defaults(handler=_demo)

    add_backtest_command(commands)  # its options and output: serve_app/backtest/command.py

    rec = commands.add_parser(
        "reconcile", help="compare the local billing ledger with Stripe; exit 1 on drift"
    )
    rec.add_argument("--shards", type=_positive_int, default=1, help="meter stream shards (1)")
    rec.add_argument("--days", type=_positive_int, default=30, help="how far back (30, max 35)")
    rec.add_argument(
        "--json", action="store_true", help="print the report as JSON (POST /v1/admin/reconcile)"
    )
    rec.set_defaults(handler=_reconcile)

    config = commands.add_parser("serve-config", help="print the Serve config file of a policy")
    config.add_argument("--policy", default=None, help="policy file (env RTCTS_POLICY_PATH)")
    config.set_defaults(handler=_serve_config)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text}")
    return value


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            loaded = load_policy_file(path)
        except RtctsError as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        p = loaded.policy
        print(
            f"{path}: ok (version {loaded.version}, {len(p.models)} models, "
            f"{len(p.routes)} routes, {len(p.plans)} plans, {len(p.tenants)} tenants)"
        )
    return 1 if failed else 0


def _hash_key(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    print(hash_api_key(key))
    return 0


def _price_table(args: argparse.Namespace, snapshot: ClusterSnapshot | None = None) -> int:
    settings = Settings.from_env(policy_path=args.policy)
    loaded = load_policy_file(settings.policy_path)
    book = PriceBook.from_policy(loaded.policy, loaded.version)
    request = PriceRequest(args.model, args.input_tokens, max_tokens=args.max_tokens)
    print(render_price_table(book, request, snapshot or sample_snapshot(loaded.policy)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from serve_app.local.runner import DEFAULT_COLD_START_SCALE, banner, serve_locally

    settings = Settings.from_env(policy_path=args.policy, http_host=args.host, http_port=args.port)
    loaded = load_policy_file(settings.policy_path)  # fail fast, before starting anything
    cold_start_scale = (
        DEFAULT_COLD_START_SCALE if args.cold_start_scale is None else args.cold_start_scale
    )
    print(f"rtcts: starting (policy {loaded.source}) ...", flush=True)
    serve_locally(
        settings,
        loaded,
        time_scale=args.time_scale,
        cold_start_scale=cold_start_scale,
        on_ready=lambda running: print(banner(running, loaded, args.time_scale), flush=True),
        say=lambda line: print(line, flush=True),
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rtcts_dev.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            url=args.url,
            key=args.key,
            speed=args.speed,
            duration_s=args.duration_s,
            trace=args.trace,
            model=args.model,
            max_concurrency=args.max_concurrency,
            dry_run=args.dry_run,
        )
    )


def _reconcile(args: argparse.Namespace) -> int:
    """Reads REDIS_URL and STRIPE_API_KEY / STRIPE_API_BASE (Settings)."""
    import asyncio

    from serve_app.metering.aggregator import stripe_sink_for
    from serve_app.metering.view import BillingView
    from serve_app.redis_client import redis_client

    settings = Settings.from_env()
    if settings.redis_url is None:
        print("rtcts: set REDIS_URL to the Redis that holds the billing ledger", file=sys.stderr)
        return 2
    if settings.stripe_api_key is None and settings.stripe_api_base is None:
        print("rtcts: set STRIPE_API_KEY (or STRIPE_API_BASE for the emulator)", file=sys.stderr)
        return 2

    async def run() -> DriftReport:
        client = redis_client(settings.redis_url or "")
        sink = stripe_sink_for(settings.stripe_api_base, settings.stripe_api_key)
        try:
            view = BillingView(client, args.shards, window_s=60, grace_s=10)
            return await view.reconcile(sink.client, days=min(args.days, 35))
        finally:
            await sink.aclose()
            await client.aclose()

    report = asyncio.run(run())
    print(render_reconcile(report, as_json=args.json))
    return 0 if report.ok else 1


def render_reconcile(report: DriftReport, *, as_json: bool = False) -> str:
    """The report as `rtcts reconcile` prints it: `to_dict()` as JSON (the shape of
    `POST /v1/admin/reconcile`), or one line per customer × meter and a verdict."""
    data = report.to_dict()
    if as_json:
        return json.dumps(data, indent=2)
    out = []
    for line in data["lines"]:
        stripe_value = "?" if line["stripe"] is None else line["stripe"]
        status = line["error"] or ("ok" if line["ok"] else f"DRIFT {line['drift']:+d}")
        out.append(
            f"{line['stripe_customer_id']:<24} {line['event_name']:<24} "
            f"local {line['local']:>14} stripe {stripe_value:>14} {line['unit']:<9}  {status}"
        )
    out.append("no drift" if report.ok else f"{len(report.drifted)} lines drift")
    return "\n".join(out)


def _serve_config(args: argparse.Namespace) -> int:
    from serve_app.serve_config import render_serve_config

    settings = Settings.from_env(policy_path=args.policy)
    print(render_serve_config(load_policy_file(settings.policy_path), settings), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
