"""A real OTLP/HTTP trace receiver, run as its own process by the tests (a test tool,
not part of rtcts): `python -m tests.otlp_receiver --out spans.jsonl [--port 0]`.

It speaks what an OpenTelemetry collector's OTLP/HTTP receiver speaks for traces:
`POST /v1/traces` with an `ExportTraceServiceRequest` in protobuf (gzip or not), and
answers 200 with an `ExportTraceServiceResponse`. Each span received is appended to
`--out` as one JSON line (name, trace and span ids in hex, parent, kind, status,
attributes, the resource's attributes). It prints `listening on <port>` once ready.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PROTOBUF = "application/x-protobuf"


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)


def attributes_of(pairs: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        result[pair.key] = value_of(pair.value)
    return result


def spans_of(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex() or None,
                        "kind": span.kind,
                        "status": span.status.code,
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "attributes": attributes_of(span.attributes),
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                    }
                )
    return spans


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, out: Path) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.out = out
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        if self.headers.get("Content-Type", "").split(";")[0].strip() != PROTOBUF:
            self.send_error(415, "OTLP/HTTP protobuf only")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:
            self.send_error(400, "not an ExportTraceServiceRequest")
            return
        lines = "".join(json.dumps(span) + "\n" for span in spans_of(request))
        with self.server.lock, self.server.out.open("a", encoding="utf-8") as out:
            out.write(lines)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", PROTOBUF)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = Receiver(args.port, args.out)
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
