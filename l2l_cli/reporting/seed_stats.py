"""Seeds as an axis: runs that differ only in ``seed`` are one configuration, summarised by the mean and spread of
the learned optimizer's ratio to its best tuned baseline and by how many seeds beat that baseline (sweep summaries,
`l2l plot`, TensorBoard's hparams view)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from l2l_cli.reporting.matrix import task_cell
from l2l_cli.reporting.run_records import RunRecord, metrics_of


def t975(df: int) -> float:
    """Student's t 97.5% quantile with ``df`` degrees of freedom: the 95% interval of a mean over few seeds."""
    from scipy.stats import t as student_t  # lazy: scipy.stats takes ~0.8 s to import, and every run loads this module

    return float(student_t.ppf(0.975, df))


@dataclass
class SeedGroup:
    label: str  # the configuration: its overrides other than seed
    overrides: dict
    runs: list = field(default_factory=list)  # (seed, ratio on the mean, gap in mean log10), seeds in order

    @property
    def ratios(self) -> list:
        return [r for _, r, _ in self.runs if math.isfinite(r)]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.ratios) if self.ratios else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.ratios) if len(self.ratios) > 1 else math.nan

    @property
    def interval(self) -> tuple:
        """The 95% confidence interval of the mean ratio (Student's t over the seeds)."""
        n = len(self.ratios)
        if n < 2:
            return math.nan, math.nan
        half = t975(n - 1) * self.std / math.sqrt(n)
        return self.mean - half, self.mean + half

    @property
    def wins(self) -> int:
        """Seeds whose learned optimizer beat the best tuned baseline on the mean final test loss."""
        return sum(r < 1 for _, r, _ in self.runs)

    @property
    def log10_gap(self) -> float:
        """Mean over seeds of (learned - best baseline) mean log10 final loss: < 0 = better in geometric mean."""
        gaps = [g for _, _, g in self.runs if math.isfinite(g)]
        return statistics.fmean(gaps) if gaps else math.nan

    def record(self) -> dict:
        low, high = self.interval
        return {"configuration": self.label, "overrides": self.overrides, "seeds": [s for s, _, _ in self.runs],
                "ratio_mean": self.mean, "ratio_std": self.std, "ratio_ci95": [low, high],
                "ratios": [r for _, r, _ in self.runs], "beat_best_baseline": self.wins,
                "mean_log10_gap": self.log10_gap}


def log10_gap(record: RunRecord) -> float:
    """The studied optimizer's mean log10 final loss minus the lowest of its baselines' (the matrix cell's figure)."""
    return task_cell(record.results)["log10_gap"] if record.results else math.nan


def seed_groups(records: list[RunRecord]) -> list[SeedGroup]:
    """Finished runs with test results grouped by their overrides other than ``seed``, in first-seen order."""
    groups: dict = {}
    for record in records:
        if record.status != "ok" or not record.results:
            continue
        rest = {k: v for k, v in record.overrides.items() if k != "seed"}
        label = " ".join(f"{k}={v}" for k, v in sorted(rest.items())) or "(defaults)"
        group = groups.setdefault(label, SeedGroup(label, rest))
        seed = record.overrides.get("seed", (record.results.get("seeds") or {}).get("seed"))
        group.runs.append((seed, metrics_of(record).get("test/ratio_to_best_baseline", math.nan),
                           log10_gap(record)))
    for group in groups.values():
        group.runs.sort(key=lambda run: (str(type(run[0])), run[0]))
    return list(groups.values())


def over_seeds(groups: list[SeedGroup]) -> bool:
    """Whether some configuration was run with more than one seed."""
    return any(len(g.runs) > 1 for g in groups)
