"""`python -m rtcts_dev.stripe_emulator --port N [--state FILE]`: serve until killed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rtcts_dev.stripe_emulator.server import bind, build_server
from rtcts_dev.stripe_emulator.state import EmulatorState, Faults


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rtcts_dev.stripe_emulator",
        description="Local Stripe emulator (meter-event subset) for rtcts.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111, help="0 picks a free port")
    parser.add_argument("--state", type=Path, help="JSON file kept up to date on every change")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of failed requests")
    parser.add_argument("--timeout-s", type=float, default=0.0, help="hold-back of a slow answer")
    parser.add_argument("--seed", type=int, help="seed of the fault draws")
    parser.add_argument("--schemas", type=Path, help="directory of meter_schemas.json")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        faults = Faults(fail_rate=args.fail_rate, timeout_s=args.timeout_s, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    state = EmulatorState(path=args.state, faults=faults)
    sock = bind(args.host, args.port)
    server = build_server(state, args.schemas, args.log_level)
    port = sock.getsockname()[1]
    print(f"stripe emulator listening on http://{args.host}:{port}", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
