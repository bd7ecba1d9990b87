"""Persistent evolution strategies (Vicol et al. 2021): each perturbed copy runs on from where it is and keeps the
sum of its perturbations over the optimizee run, so the estimate is unbiased for the whole run's (smoothed)
objective; forward passes only."""

from __future__ import annotations

from dataclasses import dataclass

from l2l_cli.core.registry import ESTIMATORS
from l2l_cli.meta.estimators.perturbed import PerturbationConfig, PerturbationEstimator


@dataclass
class PESConfig(PerturbationConfig):
    name: str = "pes"


class PersistentES(PerturbationEstimator):
    persistent = True


ESTIMATORS.register("pes", PESConfig, PersistentES)
