"""`rtcts run`'s start-up as the user sees it: each part as it comes up, with how long it
took, then the wait for the app to be ready (`GET /readyz`, through the public port
that clients use), one line per model and check as each becomes usable.

    [  0.2s] Redis: started in 0.1 s (embedded, password-protected)
    [  8.8s] Ray: started in 6.9 s
    [ 14.9s] ingress: answering after 3.4 s
    [ 15.1s] llama-3.1-8b: warm after 3.6 s
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from serve_app.errors import LocalServiceError

POLL_S = 0.2
REMIND_S = 10.0
"""While waiting, what is still awaited is printed this often."""


class Progress:
    """Start-up lines, each stamped with the time since `rtcts run` started."""

    def __init__(
        self, write: Callable[[str], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._write = write
        self._clock = clock
        self.started = clock()

    def elapsed(self) -> float:
        return self._clock() - self.started

    def line(self, text: str) -> None:
        self._write(f"  [{self.elapsed():5.1f}s] {text}")

    def done(self, what: str, since: float, detail: str = "", verb: str = "started") -> None:
        """`what` took from `since` (a clock reading) until now."""
        took = self._clock() - since
        self.line(f"{what}: {verb} in {took:.1f} s" + (f" ({detail})" if detail else ""))

    def now(self) -> float:
        return self._clock()


def describe_model(model_id: str, model: dict[str, Any], since_s: float, note: str) -> str:
    """The line for a model that just became usable."""
    if model["state"] == "ready":
        return f"{model_id}: warm after {since_s:.1f} s{note}"
    return f"{model_id}: starts on demand (min_replicas 0; its cold start is priced)"


def waiting_line(document: dict[str, Any]) -> str:
    parts = []
    for name in document["waiting_for"]:
        model = document["models"].get(name)
        if model is not None and model["start_remaining_s"] is not None:
            left = model["start_remaining_s"]
            parts.append(f"{name} (starting, {left:.0f} s of its policy cold start left)")
        elif model is not None:
            parts.append(f"{name} ({model['state']})")
        else:
            parts.append(name)
    return "waiting for " + ", ".join(parts)


def wait_ready(
    url: str,
    progress: Progress,
    *,
    stop: threading.Event,
    failure: Callable[[], str | None],
    notes: dict[str, str] | None = None,
    get: Callable[[str], httpx.Response] | None = None,
    pause: Callable[[float], object] | None = None,
) -> dict[str, Any]:
    """Poll `GET {url}/readyz` until it answers 200 (the readiness document), printing
    each part as it becomes ready. `failure()` says why the app can never be ready
    (a failed deployment), checked every poll; `stop` ends the wait early (the caller
    sees `stop` set). `notes` adds text to a model's "warm" line; `get` and `pause` are
    the HTTP call and the wait between polls (`stop.wait`), for tests."""
    notes = notes or {}
    pause = pause or stop.wait
    if get is None:
        client = httpx.Client(timeout=2.0, trust_env=False)
        get = client.get
    since = progress.now()
    answering = False
    reported: set[str] = set()
    reminded = since
    document: dict[str, Any] = {}
    while not stop.is_set():
        why = failure()
        if why is not None:
            raise LocalServiceError(f"the app failed to deploy: {why}")
        try:
            response = get(f"{url}/readyz")
            document = response.json() if response.status_code in (200, 503) else {}
        except (httpx.HTTPError, ValueError):
            document = {}
        if document.get("object") == "rtcts.readiness":
            if not answering:
                answering = True
                progress.line(f"ingress: answering after {progress.now() - since:.1f} s")
            took = progress.now() - since
            for model_id, model in document["models"].items():
                if model["ok"] and model_id not in reported:
                    reported.add(model_id)
                    progress.line(describe_model(model_id, model, took, notes.get(model_id, "")))
            for check in ("admission", "billing"):
                if document["checks"][check] and check not in reported:
                    reported.add(check)
                    progress.line(f"{check}: running after {took:.1f} s")
            if document["ready"]:
                return document
        if progress.now() - reminded >= REMIND_S:
            reminded = progress.now()
            progress.line(waiting_line(document) if document else "waiting for the ingress")
        pause(POLL_S)
    return document
