"""Truncations of random length, log-uniform in [min_unroll, unroll] (learned_optimization's schedule): no fixed
truncation length for the optimizer to fit."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import torch

from l2l_cli.core.checks import check
from l2l_cli.core.registry import SCHEDULES
from l2l_cli.meta.schedules.truncated import TruncatedSchedule, TruncatedScheduleConfig


@dataclass
class LogUniformScheduleConfig(TruncatedScheduleConfig):
    name: str = "loguniform"
    min_unroll: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.min_unroll <= self.unroll, "schedule.min_unroll",
              f"must be in [1, schedule.unroll] = [1, {self.unroll}], got {self.min_unroll}")


class LogUniformSchedule(TruncatedSchedule):
    def unroll_lengths(self, num_steps: int, gen) -> List[int]:
        cfg = self.config
        lengths, covered = [], 0
        low, high = math.log(cfg.min_unroll), math.log(cfg.unroll + 1)  # floor(exp(U)) covers unroll too
        while covered < num_steps:
            u = float(torch.rand((), generator=gen, dtype=torch.float64))
            length = min(int(math.exp(low + u * (high - low))), cfg.unroll, num_steps - covered)
            lengths.append(length)
            covered += length
        return lengths


SCHEDULES.register("loguniform", LogUniformScheduleConfig, LogUniformSchedule)
