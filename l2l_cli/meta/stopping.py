"""Why meta-training stops early: too many non-finite meta-updates in a row, or a signal (Ctrl-C, SIGTERM, SLURM's
requeue), which every rank agrees on so they stop after the same iteration."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from l2l_cli.meta.distributed import Rank, agree_stop


class DivergenceError(RuntimeError):
    """Too many non-finite meta-updates in a row; the message suggests what to lower."""


class StopRequested(RuntimeError):
    """Raised after a signal once the current iteration is done and the last checkpoint is written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):
        return StopRequested, (str(self), self.signum)


class NonFiniteGuard:
    """Counts meta-updates skipped because their loss or meta-gradient was not finite: in all (kept in checkpoints)
    and in a row (``limit`` in a row stop the run)."""

    def __init__(self, limit: int, total: int = 0):
        self.limit, self.total, self.in_row = limit, total, 0

    def record(self, finite: list) -> None:
        """After an optimizee run: per truncation, whether its meta-update was applied."""
        self.total += finite.count(False)
        for ok in finite:
            self.in_row = 0 if ok else self.in_row + 1

    @property
    def tripped(self) -> bool:
        return self.in_row >= self.limit

    def error(self, meta_lr: float, output_scale: Optional[float]) -> DivergenceError:
        return DivergenceError(
            f"meta-training diverged: {self.in_row} meta-updates in a row had a non-finite loss or meta-gradient; "
            f"try a lower train.meta_lr (now {meta_lr})"
            + (f" or optimizer.output_scale (now {output_scale})" if output_scale is not None else ""))


class StopSignal:
    """``should_stop()``'s signal number (0: none), agreed between the ranks of a distributed run."""

    def __init__(self, should_stop: Callable[[], int], rank: Optional[Rank], device: torch.device):
        self.should_stop, self.rank, self.device = should_stop, rank, device

    def poll(self) -> int:
        stop = self.should_stop()
        return stop if self.rank is None else agree_stop(stop, self.device)
