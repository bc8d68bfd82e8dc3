"""The `rtcts.request` server span around each priced request (`traces.py` lists the
spans inside it): the ingress's ASGI entry with the span, built instead of the plain
one when the replica has a tracer provider (`build_asgi`).

The span covers the whole answer, a streamed body included, so the spans opened while
the stream runs (`rtcts.settle` at its end) are its children; a caller's W3C
`traceparent` header makes it part of the caller's trace.
"""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import Message, Receive, Scope, Send

from serve_app.ingress.asgi import IngressASGI, route_path
from serve_app.telemetry import tracer, tracing


class TracedIngressASGI(IngressASGI):
    """`IngressASGI` with a `rtcts.request` span around each priced request."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing():
            await super().__call__(scope, receive, send)
            return
        path = route_path(scope)
        if (scope["method"], path) not in self._routes:
            await super().__call__(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with tracer.start_as_current_span(
            "rtcts.request",
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "http.route": path},
        ) as span:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await super().__call__(scope, receive, sending)
