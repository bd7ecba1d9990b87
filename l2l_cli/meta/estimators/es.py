"""Antithetic evolution strategies on each truncation: every truncation starts all perturbed copies from where an
unperturbed copy is, so the estimate is the gradient of the truncation alone (smoothed), with truncated BPTT's
short-horizon bias; forward passes only."""

from __future__ import annotations

from dataclasses import dataclass

from l2l_cli.core.registry import ESTIMATORS
from l2l_cli.meta.estimators.perturbed import PerturbationConfig, PerturbationEstimator


@dataclass
class ESConfig(PerturbationConfig):
    name: str = "es"


class EvolutionStrategies(PerturbationEstimator):
    persistent = False


ESTIMATORS.register("es", ESConfig, EvolutionStrategies)
