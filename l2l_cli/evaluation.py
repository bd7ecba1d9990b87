"""Honest comparison: baselines' learning rates tuned on validation functions, every optimizer on the same test
functions, per-step statistics that keep non-finite runs visible instead of averaging them away."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from l2l_cli.config import BaselineConfig
from l2l_cli.optimizers.baselines import Baseline
from l2l_cli.rollout import mean_final_loss, rollout


@dataclass
class TuningResult:
    name: str
    lr: float
    scores: Dict[float, float]  # lr -> mean final validation loss (+inf where any run diverged)
    tuned: bool = True

    @property
    def at_grid_edge(self) -> bool:
        grid = sorted(self.scores)
        return self.tuned and len(grid) > 1 and self.lr in (grid[0], grid[-1])


def tune_learning_rate(family, val_problem, cfg: BaselineConfig, grid: List[float], num_steps: int) -> TuningResult:
    """Pick the grid value with the lowest mean final loss on the validation functions."""
    scores = {float(lr): mean_final_loss(rollout(family, val_problem, Baseline(cfg, lr), num_steps)) for lr in grid}
    best = min(scores, key=lambda lr: (scores[lr], lr))
    return TuningResult(cfg.name, best, scores)


@dataclass
class CurveStats:
    mean: List[float]
    median: List[float]
    q10: List[float]
    q90: List[float]
    nonfinite: int  # runs whose loss became inf/nan; statistics are over the finite runs, and this count is reported
    runs: int

    @property
    def final_mean(self) -> float:
        return self.mean[-1]

    @property
    def final_median(self) -> float:
        return self.median[-1]


def curve_stats(losses: torch.Tensor) -> CurveStats:
    """losses (T+1, B) -> per-step mean / median / 10% / 90% over the runs that stayed finite throughout."""
    finite_runs = torch.isfinite(losses).all(dim=0)
    kept = losses[:, finite_runs].double()
    if kept.shape[1] == 0:
        nan = [float("nan")] * losses.shape[0]
        return CurveStats(nan, nan, nan, nan, nonfinite=losses.shape[1], runs=losses.shape[1])
    q = torch.quantile(kept, torch.tensor([0.1, 0.5, 0.9], dtype=kept.dtype), dim=1)
    return CurveStats(mean=kept.mean(1).tolist(), median=q[1].tolist(), q10=q[0].tolist(), q90=q[2].tolist(),
                      nonfinite=int((~finite_runs).sum()), runs=losses.shape[1])


def compare(family, test_problem, rules: dict, num_steps: int, on_done=None) -> Dict[str, CurveStats]:
    """Every optimizer on the same test problems (same W, y, theta_0, data)."""
    results = {}
    for name, rule in rules.items():
        results[name] = curve_stats(rollout(family, test_problem, rule, num_steps))
        if on_done:
            on_done(name)
    return results


def best_baseline(stats: Dict[str, CurveStats], learned: Optional[str]) -> Optional[str]:
    """The baseline with the lowest final mean loss; one with diverged runs ranks last."""
    candidates = {n: (s.final_mean if s.nonfinite == 0 else float("inf")) for n, s in stats.items() if n != learned}
    return min(candidates, key=candidates.get) if candidates else None
