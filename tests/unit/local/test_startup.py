"""`rtcts run`'s start-up lines and its wait for `GET /readyz`: each part is reported
once as it becomes ready, a failed deployment ends the wait, a stop ends it early.
A fake clock and fake answers; no server."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from serve_app.errors import LocalServiceError
from serve_app.local.startup import Progress, wait_ready
from tests.fakes import FakeClock


def document(
    ready: bool, models: dict[str, tuple[str, bool, float | None]], **checks: Any
) -> dict[str, Any]:
    return {
        "object": "rtcts.readiness",
        "ready": ready,
        "waiting_for": [m for m, (_, ok, _) in models.items() if not ok],
        "checks": {"live_state": True, "admission": True, "billing": True, **checks},
        "models": {
            m: {"state": state, "ok": ok, "start_remaining_s": left}
            for m, (state, ok, left) in models.items()
        },
    }


class Answers:
    """`get` for `wait_ready`: each call moves the clock and answers the next item."""

    def __init__(self, clock: FakeClock, answers: list[Any]) -> None:
        self.clock = clock
        self.answers = answers
        self.urls: list[str] = []

    def __call__(self, url: str) -> httpx.Response:
        self.urls.append(url)
        self.clock.now += 1.0
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status = 200 if answer["ready"] else 503
        return httpx.Response(status, json=answer)


def no_wait(seconds: float) -> None:
    """The wait between polls: the fake clock moves on each answer instead."""


def test_progress_lines_say_when_and_how_long() -> None:
    clock = FakeClock(100.0)
    lines: list[str] = []
    progress = Progress(lines.append, clock)
    clock.now = 102.5
    progress.done("Ray", 100.5, "dashboard http://127.0.0.1:8265")
    assert lines == ["  [  2.5s] Ray: started in 2.0 s (dashboard http://127.0.0.1:8265)"]


def test_wait_ready_reports_each_part_once_then_returns_the_document() -> None:
    clock = FakeClock(0.0)
    lines: list[str] = []
    starting = document(
        False,
        {
            "small": ("ready", True, None),
            "mid": ("starting", False, 40.0),
            "big": ("scaled_to_zero", True, None),
        },
        billing=False,
    )
    ready = document(
        True,
        {
            "small": ("ready", True, None),
            "mid": ("ready", True, None),
            "big": ("scaled_to_zero", True, None),
        },
    )
    get = Answers(clock, [httpx.ConnectError("refused"), starting, starting, ready])
    result = wait_ready(
        "http://127.0.0.1:8000",
        Progress(lines.append, clock),
        stop=threading.Event(),
        failure=lambda: None,
        notes={"mid": " (cold start 60 s, simulated in 3.0 s)"},
        get=get,
        pause=no_wait,
    )
    assert result["ready"] is True
    assert get.urls[0] == "http://127.0.0.1:8000/readyz"
    text = "\n".join(lines)
    assert text.count("ingress: answering") == 1
    assert text.count("small: warm") == 1
    assert "mid: warm after 4.0 s (cold start 60 s, simulated in 3.0 s)" in text
    assert "big: starts on demand" in text
    assert text.count("admission: running") == 1
    assert "billing: running after 4.0 s" in text


def test_a_failed_deployment_ends_the_wait() -> None:
    clock = FakeClock(0.0)
    get = Answers(clock, [httpx.ConnectError("refused")])
    with pytest.raises(LocalServiceError, match="failed to deploy: the ingress raised"):
        wait_ready(
            "http://x",
            Progress(lambda line: None, clock),
            stop=threading.Event(),
            failure=lambda: "the ingress raised" if clock.now > 3 else None,
            get=get,
            pause=no_wait,
        )


def test_a_stop_ends_the_wait_early() -> None:
    clock = FakeClock(0.0)
    stop = threading.Event()
    stop.set()
    get = Answers(clock, [httpx.ConnectError("refused")])
    assert (
        wait_ready(
            "http://x", Progress(lambda line: None, clock), stop=stop, failure=lambda: None, get=get
        )
        == {}
    )
    assert get.urls == []


def test_a_long_wait_says_what_it_waits_for() -> None:
    clock = FakeClock(0.0)
    lines: list[str] = []
    starting = document(False, {"mid": ("starting", False, 41.2)})
    ready = document(True, {"mid": ("ready", True, None)})
    answers = [starting] * 12 + [ready]
    wait_ready(
        "http://x",
        Progress(lines.append, clock),
        stop=threading.Event(),
        failure=lambda: None,
        get=Answers(clock, answers),
        pause=no_wait,
    )
    assert any(
        "waiting for mid (starting, 41 s of its policy cold start left)" in line for line in lines
    )
