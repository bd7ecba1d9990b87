"""A baseline's tuned learning rate, and the full-grid search (``eval.lr_search=grid``): every value of the grid
one at a time, then rounds of refinement around the best; the reference the staged search (lr_search.py) is
checked against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from l2l_cli.evaluation.rollout import selection_score
from l2l_cli.optimizers.baselines import BaselineConfig, build_baseline


@dataclass
class TuningResult:
    name: str
    lr: float
    scores: Dict[float, float]  # lr -> validation selection score (+inf where any run diverged)
    tuned: bool = True

    grid: List[float] = field(default_factory=list)  # the grid before refinement
    search: str = "grid"  # eval.lr_search: "grid" (every value, one at a time) or "staged" (lr_search.py)
    screen: Dict[float, float] = field(default_factory=dict)  # staged: lr -> score on the screening functions
    stopped: Dict[float, str] = field(default_factory=dict)  # staged: lr -> why its run stopped early

    @property
    def at_grid_edge(self) -> bool:
        """The best value is at (or refined beyond) an end of a grid of 2+ values: the grid may be too narrow."""
        return self.tuned and len(self.grid) > 1 and not min(self.grid) < self.lr < max(self.grid)


def tune_learning_rate(family, val_problem, cfg: BaselineConfig, grid: List[float], num_steps: int,
                       refine: int = 0) -> TuningResult:
    """Pick the learning rate with the lowest selection score on the validation functions (as the learned
    optimizer's checkpoint is picked): the grid, then ``refine`` rounds that try the best value x and / 10^(1/4),
    10^(1/8), ..."""
    scores: Dict[float, float] = {}

    def best_of(lrs) -> float:
        for lr in lrs:
            if float(lr) not in scores:
                scores[float(lr)] = selection_score(family, val_problem, build_baseline(cfg, lr), num_steps)
        return best_rate(scores)

    best = best_of(grid)
    for level in range(refine):
        factor = refinement_factor(level)
        best = best_of([best / factor, best * factor])
    return TuningResult(cfg.name, best, scores, grid=[float(lr) for lr in grid])


def best_rate(scores: Dict[float, float]) -> float:
    """The learning rate with the lowest score; the smaller one of a tie (every run diverged: the smallest)."""
    return min(scores, key=lambda lr: (scores[lr], lr))


def refinement_factor(level: int) -> float:
    """Round ``level`` of refinement tries the best value x and / this: 10^(1/4), then 10^(1/8), ..."""
    return 10 ** (0.25 / 2**level)
