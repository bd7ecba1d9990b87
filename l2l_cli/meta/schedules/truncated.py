"""Truncated BPTT's schedule: each optimizee run of num_steps cut into unrolls of ``unroll`` steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from l2l_cli.core.checks import check, check_at_least_one, check_choice
from l2l_cli.core.registry import SCHEDULES

# each unroll's objective: uniform (paper: sum_t f_t), log (sum_t log f_t) or last (only its final step)
WEIGHTINGS = ("uniform", "log", "last")


@dataclass
class TruncatedScheduleConfig:
    """Each optimizee run of num_steps is cut into unrolls of ``unroll`` steps, a meta-update after each."""

    name: str = "truncated"
    num_steps: int = 100
    unroll: int = 20
    weighting: str = "uniform"

    def __post_init__(self) -> None:
        check_choice(self.name, "schedule.name", tuple(SCHEDULES.names()))
        check_at_least_one(self, "schedule.", ("num_steps", "unroll"))
        check(self.unroll <= self.num_steps, "schedule.unroll",
              f"must be <= schedule.num_steps ({self.num_steps}), got {self.unroll}")
        check_choice(self.weighting, "schedule.weighting", WEIGHTINGS)


class TruncatedSchedule:
    """Fixed truncations; one horizon. ``gen``: the trainer's generator, for schedules that draw their truncations
    (resume then reproduces them)."""

    def __init__(self, config: TruncatedScheduleConfig):
        self.config = config

    def unroll_lengths(self, num_steps: int, gen) -> List[int]:
        """The truncations of one optimizee run of num_steps."""
        unroll = self.config.unroll
        return [min(unroll, num_steps - start) for start in range(0, num_steps, unroll)]

    def horizons(self) -> List[int]:
        """The optimizee horizons meta-training goes through; one unless a curriculum."""
        return [self.config.num_steps]


SCHEDULES.register("truncated", TruncatedScheduleConfig, TruncatedSchedule)
