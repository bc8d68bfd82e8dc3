"""The `rtcts` command line.

    rtcts policy validate FILE...   check policy files; exit 0 when all are valid
    rtcts policy hash-key KEY       print the SHA-256 a policy stores for an API key
    rtcts price-table [--model M] [--input-tokens N] [--max-tokens N]
                                    the decision for a sample request on each plan
    rtcts run                       what `make run` calls

Errors are one line each on stderr with a non-zero exit; never a stack trace.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from serve_app.errors import RtctsError
from serve_app.policy import hash_api_key, load_policy_file
from serve_app.pricing import ClusterSnapshot, PriceBook, PriceRequest
from serve_app.pricing.table import render_price_table, sample_snapshot
from serve_app.settings import Settings


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

    for name, handler, text in (
        ("price-table", _price_table, "decide a sample request on every plan"),
        ("run", _run, "run rtcts locally (for now: the price table of the policy)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--policy", default=None, help="policy file (env RTCTS_POLICY_PATH)")
        command.add_argument("--model", default="auto", help="model id or route alias")
        command.add_argument("--input-tokens", type=_positive_int, default=1000)
        command.add_argument("--max-tokens", type=_positive_int, default=None)
        command.set_defaults(handler=handler)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
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
    print("rtcts: the serving path is not built yet; the price table of the policy:\n")
    return _price_table(args)


if __name__ == "__main__":
    sys.exit(main())
