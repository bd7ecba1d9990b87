"""Graceful stop on SIGINT/SIGTERM (and, in a job submitit started, its preemption signal): finish the current
iteration, write last.pt, exit non-zero, or have SLURM requeue the job to resume where it stopped."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable, Optional

log = logging.getLogger("l2l.signals")


def preemption_signal() -> Optional[int]:
    """The signal submitit asks SLURM to send before a job's time limit or preemption (USR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise), in a job submitit started; None elsewhere."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


class GracefulStop:
    """While active, the first SIGINT or SIGTERM (or submitit's preemption signal) is only recorded (the loop polls
    ``stop()``); a second one interrupts at once. Outside the main thread (some launchers) signals cannot be caught
    and nothing changes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, quiet: bool = False):
        self.signum = 0
        self.quiet = quiet  # other ranks of a distributed run: rank 0 says it
        self._previous = {}
        self.preemption = preemption_signal()

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        if not self.quiet:
            log.warning("received %s: finishing the current iteration, then writing last.pt (again to abort now)",
                        signal.Signals(signum).name)

    def stop(self) -> int:
        return self.signum

    def requeue(self) -> Optional[Callable]:
        """After a stop for submitit's preemption signal: submitit's own handler (it saves the job for a requeue,
        asks SLURM to requeue it and exits); None for any other stop."""
        if self.preemption is not None and self.signum == self.preemption:
            handler = self._previous.get(self.preemption)
            return handler if callable(handler) else None
        return None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (*self.SIGNALS, *([self.preemption] if self.preemption else [])):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
