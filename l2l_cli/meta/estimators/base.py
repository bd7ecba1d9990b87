"""The interface of a meta-gradient estimator, which the trainer knows by this interface alone.

An estimator is built once per meta-training from its config (``estimator=`` group) and the learned optimizer; each
meta-iteration it ``start``s a batch of optimizee runs, and the trainer asks that run to ``unroll`` one truncation
after another: steps start+1 .. start+steps, returning the truncation's meta-gradient and losses. Whatever it keeps
between truncations (theta, the optimizer's state, perturbations) lives in the run and ends with it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

from l2l_cli.core.checks import MISSING


@dataclass
class EstimatorConfig:
    """What every estimator's config has: its registered name; each estimator adds its own keys."""

    name: str = MISSING


@dataclass
class UnrollGradient:
    grads: List[torch.Tensor]  # dJ/dphi in net.parameters() order
    loss_sum: torch.Tensor  # sum over the unroll's steps of the mean loss over functions
    final: torch.Tensor  # per-function losses after the unroll's last step


class EstimatorRun(abc.ABC):
    """A batch of optimizee runs in progress."""

    @abc.abstractmethod
    def unroll(self, start: int, steps: int) -> UnrollGradient:
        """Steps start+1 .. start+steps and the meta-gradient of their objective (a mean over the functions)."""


class Estimator(abc.ABC):
    """Built as ``Cls(config, net, compiled)``; ``compiled``: the learned optimizer's step is torch.compiled."""

    # whether it backpropagates through the unroll (autograd or a hand-written BPTT); es / pes run forward only
    differentiates: bool = True
    # whether the learned optimizer's compiled step serves it (run policy compiles only for those that say so)
    compiles: bool = True

    def __init__(self, config: Any, net, compiled: bool = False):
        self.config, self.net, self.compiled = config, net, compiled

    @abc.abstractmethod
    def start(self, family, problem, *, gen: torch.Generator, weighting: str,
              rows: Optional[Tuple[int, int, int]] = None, horizon: Optional[int] = None) -> EstimatorRun:
        """Start runs of ``problem``'s functions. ``gen``: the trainer's generator (perturbations come from it);
        ``weighting``: each truncation's objective (schedule.weighting); ``rows``: (first, stop, total) when the
        batch is a rank's share of ``total`` functions; ``horizon``: the runs' length in steps."""
