"""A curriculum over the optimizee horizon (Chen et al. 2020): stage k meta-trains on runs of stages[k] steps and
validates at the next stage's length; the stage ends after ``patience`` validations without a gain or
``stage_iterations`` iterations; its best weights are restored, and training goes on to the next stage, or stops
where the stage brought no gain over the weights it started from (or after the last stage)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

from l2l_cli.core.checks import check, check_at_least_one
from l2l_cli.core.registry import SCHEDULES
from l2l_cli.meta.schedules.truncated import TruncatedSchedule, TruncatedScheduleConfig


@dataclass
class CurriculumScheduleConfig(TruncatedScheduleConfig):
    """num_steps: the last stage's horizon, what evaluation runs by default."""

    name: str = "curriculum"
    stages: List[int] = field(default_factory=lambda: [100, 200, 500, 1000])
    num_steps: int = 1000
    stage_iterations: int = 200
    patience: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stages = [int(k) for k in self.stages]
        check(len(self.stages) >= 1 and all(a < b for a, b in zip(self.stages, self.stages[1:], strict=False))
              and self.stages[-1] == self.num_steps and self.stages[0] >= self.unroll, "schedule.stages",
              f"must increase from >= schedule.unroll ({self.unroll}) to schedule.num_steps ({self.num_steps}), "
              f"got {self.stages}")
        check_at_least_one(self, "schedule.", ("stage_iterations", "patience"))


class CurriculumSchedule(TruncatedSchedule):
    def horizons(self) -> List[int]:
        return list(self.config.stages)


SCHEDULES.register("curriculum", CurriculumScheduleConfig, CurriculumSchedule)


@dataclass
class Curriculum:
    """Where meta-training is in its horizons: the stage, when it began, validations in a row without a gain, the
    validation score of the weights the stage started from, and whether training is over. One stage (and no
    decisions) for every schedule but the curriculum; checkpoints keep ``state()``."""

    horizons: List[int]
    patience: int = 0
    stage_iterations: int = 0
    stage: int = 0
    stage_start: int = 0
    stale: int = 0
    reference: float = math.inf
    finished: bool = False

    @classmethod
    def of(cls, schedule) -> "Curriculum":
        cfg = schedule.config
        return cls(schedule.horizons(), getattr(cfg, "patience", 0), getattr(cfg, "stage_iterations", 0))

    @property
    def active(self) -> bool:
        return len(self.horizons) > 1

    @property
    def horizon(self) -> int:
        """The optimizee steps of this stage's training runs."""
        return self.horizons[self.stage]

    @property
    def val_horizon(self) -> int:
        """The steps validation runs: the next stage's horizon in a curriculum, else the training horizon."""
        return self.horizons[min(self.stage + 1, len(self.horizons) - 1)]

    def stage_over(self, gain: bool, iteration: int) -> bool:
        """After a validation (``gain``: it beat the stage's best and its reference): whether the stage ends."""
        self.stale = 0 if gain else self.stale + 1
        return self.stale >= self.patience or iteration - self.stage_start >= self.stage_iterations

    def end_stage(self, gained: bool) -> bool:
        """End the stage; returns whether training goes on to the next one (it gained and was not the last)."""
        if not gained or self.stage + 1 >= len(self.horizons):
            self.finished = True
            return False
        return True

    def advance(self, iteration: int, reference: float) -> None:
        """Start the next stage at ``iteration`` from weights whose score at its validation horizon is
        ``reference``."""
        self.stage, self.stage_start, self.stale, self.reference = self.stage + 1, iteration, 0, reference

    def state(self) -> dict:
        return {"stage": self.stage, "stage_start": self.stage_start, "stale": self.stale,
                "reference": self.reference, "finished": self.finished}

    def load_state(self, place: dict) -> None:
        self.stage, self.stage_start = int(place.get("stage", 0)), int(place.get("stage_start", 0))
        self.stale, self.reference = int(place.get("stale", 0)), float(place.get("reference", math.inf))
        self.finished = bool(place.get("finished", False))
