"""Graceful stop on SIGINT/SIGTERM: finish the current iteration, write last.pt, exit non-zero."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("l2l.signals")


class GracefulStop:
    """While active, the first SIGINT or SIGTERM is only recorded (the loop polls ``stop()``); a second one
    interrupts at once. Outside the main thread (some launchers) signals cannot be caught and nothing changes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: finishing the current iteration, then writing last.pt (again to abort now)",
                    signal.Signals(signum).name)

    def stop(self) -> int:
        return self.signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
