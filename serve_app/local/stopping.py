"""The stop rule's clock and signals, for `rtcts run` (the rule: runner.py's docstring).

The first Ctrl-C, SIGTERM or SIGHUP asks for an orderly stop and abandons a start-up
under way (`StopRequested`); `STOP_LIMIT_S` after it, or at a second Ctrl-C, the stop
is forced (`force`, which kills what is left and does not return).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

STOP_LIMIT_S = 13.0
"""An orderly stop still running this long after it was asked for is forced."""
SECOND_SIGNAL_S = 0.5
"""Signals closer than this to the first are the same Ctrl-C: a process forked from
`rtcts run` that has not yet run its own program shares its wakeup pipe, so one Ctrl-C
to the process group can write there twice."""


class StopRequested(BaseException):
    """Ctrl-C, SIGTERM or SIGHUP while `rtcts run` was starting: abandon the start-up.
    A BaseException, so that no library's `except Exception` swallows it."""


class Stopper:
    """The stop's clock and signals.

    A signal is seen twice: at once by a thread reading the wakeup pipe that the
    interpreter writes each signal's number to (`signal.set_wakeup_fd`), which starts
    the stop's clock at the first signal and forces the stop at a second one (at least
    `SECOND_SIGNAL_S` later), even while the main thread is stuck in a C call
    (ray.init); and later, when the main thread runs Python again, by the handler,
    which abandons a start-up (`StopRequested`). `force` does not return."""

    def __init__(
        self,
        event: threading.Event,
        force: Callable[[str], None],
        say: Callable[[str], None],
        limit_s: float = STOP_LIMIT_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.event = event
        self.starting = True
        """While True, the handler abandons the start-up; the start-up's end clears it."""
        self._force = force
        self._say = say
        self._limit_s = limit_s
        self._sleep = sleep
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self._wakeup: int | None = None

    def install(self) -> None:
        """Handlers for SIGINT, SIGTERM and SIGHUP (again after a library replaced one:
        ray.init sets its own SIGTERM handler) and the wakeup pipe (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        if self._wakeup is None:
            read, self._wakeup = os.pipe()
            os.set_blocking(self._wakeup, False)
            threading.Thread(
                target=self._read_signals, args=(read,), name="rtcts-signals", daemon=True
            ).start()
        signal.set_wakeup_fd(self._wakeup, warn_on_full_buffer=False)

    def _read_signals(self, fd: int) -> None:
        first_at: float | None = None
        while os.read(fd, 64):
            now = time.monotonic()
            if first_at is None:
                first_at = now
                self._say("rtcts: stopping (Ctrl-C again to force) ...")
                self.begin()
            elif now - first_at >= SECOND_SIGNAL_S:
                self._force("asked twice")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()
        if self.starting:
            self.starting = False
            raise StopRequested

    def check(self) -> None:
        """Between start-up steps: abandon the start-up if a stop was asked for (a step
        may have swallowed the `StopRequested` raised in its middle)."""
        if self.event.is_set():
            raise StopRequested

    def begin(self) -> None:
        """The stop begins (a signal, the caller's event, or an error): start its clock."""
        self.event.set()
        with self._lock:
            if self._watchdog is not None:
                return
            self._watchdog = threading.Thread(target=self._watch, name="rtcts-stop", daemon=True)
        self._watchdog.start()

    def join(self) -> None:
        """Wait for the stop's clock to run out (tests: with a `sleep` that returns)."""
        if self._watchdog is not None:
            self._watchdog.join()

    def _watch(self) -> None:
        self._sleep(self._limit_s)
        self._force(f"still stopping after {self._limit_s:.0f} s")
