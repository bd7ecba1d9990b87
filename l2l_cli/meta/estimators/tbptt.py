"""Truncated backpropagation through time (the paper's estimator): the meta-gradient of each truncation by
differentiating through its unroll, with autograd or an architecture's hand-written first-order BPTT."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict

import torch

from l2l_cli.core.checks import check_choice
from l2l_cli.core.registry import ESTIMATORS
from l2l_cli.meta.estimators.base import Estimator, EstimatorConfig, EstimatorRun, UnrollGradient
from l2l_cli.meta.estimators.objective import unroll_objective
from l2l_cli.optimizees.base import Family, loss_and_grad
from l2l_cli.optimizers.learned.base import LearnedRule, bind_to_family

log = logging.getLogger(__name__)

BPTT_METHODS = ("manual", "autograd")


@dataclass
class TBPTTConfig(EstimatorConfig):
    name: str = "tbptt"
    # manual: the architecture's hand-written first-order BPTT where it has one (faster, less memory; the same
    # numbers), else autograd | autograd: the reference. second_order always uses autograd.
    bptt: str = "manual"
    second_order: bool = False  # keep the optimizee's second derivatives in the meta-gradient

    def __post_init__(self) -> None:
        check_choice(self.bptt, "estimator.bptt", BPTT_METHODS)


# architecture class -> factory(net, compiled) of its hand-written first-order BPTT, an object with
# ``unroll(family, problem, theta, state, grad, first_step, steps, weighting)`` returning grads, loss_sum, final,
# theta, state and grad. Registered by the module that writes it (``lstm_bptt``), so architectures never import
# meta-training.
FAST_PATHS: Dict[type, Callable] = {}


def register_fast_path(architecture: type, factory: Callable) -> None:
    FAST_PATHS[architecture] = factory


def fast_path(net: LearnedRule, compiled: bool):
    """The architecture's own first-order BPTT (exactly its class: a subclass may compute otherwise), or None."""
    ESTIMATORS.names()  # discovery imports every estimator module, and with them the fast paths they register
    factory = FAST_PATHS.get(type(net))
    return None if factory is None else factory(net, compiled)


class OptimizeeRun(EstimatorRun):
    """One optimizee run of a batch of functions in this process, cut into truncated unrolls: theta, the learned
    optimizer's state and the gradient at theta carry over from one unroll to the next, the graph does not.

    ``manual``: the architecture's hand-written BPTT (``LearnedOptimizer.manual_bptt``), which computes the
    first-order meta-gradient without autograd (the same numbers, faster); None or second_order: autograd through
    ``unroll_objective``.
    """

    def __init__(self, family: Family, problem, net: LearnedRule, second_order: bool = False,
                 weighting: str = "uniform", manual=None, horizon=None):
        self.family, self.problem, self.net = family, problem, net
        self.second_order, self.weighting = second_order, weighting
        self.manual = None if second_order else manual
        self.theta = family.initial_params(problem)
        bind_to_family(net, family, problem, horizon)
        self.state = net.init_state(self.theta)
        _, self.grad = loss_and_grad(family, problem, self.theta, 0)

    def unroll(self, start: int, steps: int) -> UnrollGradient:
        """Steps start+1 .. start+steps, and the meta-gradient of their objective (each function's term a mean over
        this run's functions)."""
        if self.manual is not None:
            result = self.manual.unroll(self.family, self.problem, self.theta, self.state, self.grad, start, steps,
                                        self.weighting)
            grads, loss_sum, final = result.grads, result.loss_sum, result.final
            theta, state, grad = result.theta, result.state, result.grad
        else:
            grad = self.grad if self.second_order else self.grad.detach()
            objective, loss_sum, final, theta, state, grad = unroll_objective(
                self.family, self.problem, self.net, self.theta, self.state, grad, start, steps, self.second_order,
                self.weighting)
            params = list(self.net.parameters())
            grads = torch.autograd.grad(objective, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        self.theta, self.state, self.grad = theta.detach(), self.net.detach_state(state), grad.detach()
        return UnrollGradient(grads, loss_sum.detach(), final.detach())


class TruncatedBPTT(Estimator):
    def __init__(self, config: TBPTTConfig, net: LearnedRule, compiled: bool = False):
        super().__init__(config, net, compiled)
        self.manual = None
        if config.bptt == "manual" and not config.second_order:
            self.manual = fast_path(net, compiled)
            if self.manual is None:
                log.info("%s has no hand-written BPTT: its meta-gradients come from autograd", net.name)

    def start(self, family, problem, *, gen, weighting, rows=None, horizon=None) -> OptimizeeRun:
        return OptimizeeRun(family, problem, self.net, self.config.second_order, weighting, self.manual, horizon)


ESTIMATORS.register("tbptt", TBPTTConfig, TruncatedBPTT)
