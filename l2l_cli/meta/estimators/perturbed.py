"""Meta-gradients from forward passes only: what antithetic evolution strategies (``es``) and persistent ES
(``pes``) share.

Each function of a batch is copied 2 x pairs times; copy (i, +) runs the learned optimizer with weights phi + eps_i,
copy (i, -) with phi - eps_i, eps_i ~ N(0, sigma^2 I) drawn per function, pair and truncation. With L the
truncation's objective (schedule.weighting over its steps) of a copy, the estimate is

    g = mean over functions and pairs of  xi_i (L(+) - L(-)) / (2 sigma^2)

- es: xi_i = eps_i, and every truncation starts all copies from an unperturbed copy's theta and state (which the
  copies leave behind): the gradient of the truncation alone, smoothed, with truncated BPTT's short-horizon bias.
- pes (Vicol et al. 2021, "Unbiased gradient estimation in unrolled computation graphs with persistent evolution
  strategies"): the copies run on from where they are, and xi_i sums the copy's perturbations over the optimizee run
  so far, so the estimate is unbiased for the gradient of the whole run's (smoothed) objective.

Antithetic pairs cancel the objective's zeroth-order term exactly: a constant added to L changes nothing.

Every copy is a row of one batch of functions (``Family.repeat``) and its learned-optimizer step one call vmapped
over the copies' weights (``torch.func``): no Python loop over copies, no autograd graph, memory independent of the
truncation length. No meta-update state outlives an optimizee run, which ends with the meta-iteration: checkpoints
between iterations hold everything a bit-identical resume needs (the generator the perturbations come from).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.utils import parameters_to_vector

from l2l_cli.core.checks import check, check_at_least_one
from l2l_cli.meta.estimators.base import Estimator, EstimatorConfig, EstimatorRun, UnrollGradient
from l2l_cli.meta.estimators.objective import step_terms
from l2l_cli.meta.weights import split_like
from l2l_cli.optimizees.base import Family, loss_and_grad, map_tensors
from l2l_cli.optimizers.learned.base import LearnedRule, bind_to_family

# coordinates per vmapped call on the CPU: copies go through in groups this size, whose activations stay in cache
# (as the LSTM's own chunks; an optimizer may set its own ``coordinates_per_call``); on a GPU all copies go at once
COORDINATES_PER_CALL = 16384


class _Stepper(nn.Module):
    """``net.step`` as a module's forward, so ``functional_call`` can run it with other weights."""

    def __init__(self, net: LearnedRule):
        super().__init__()
        self.net = net

    def forward(self, grad, state, t):
        return self.net.step(grad, state, t)


def unflatten_rows(flat: torch.Tensor, names, shapes) -> dict:
    """(M, D) rows of flat weights -> {name: (M, *shape)} views."""
    out, offset = {}, 0
    for name, shape in zip(names, shapes, strict=True):
        size = math.prod(shape)
        out[name] = flat[:, offset: offset + size].view(flat.shape[0], *shape)
        offset += size
    return out


def _cat(trees):
    """Join a list of equally nested states (lists / tuples of tensors) along their first dimension."""
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(trees)
    return type(first)(_cat([t[i] for t in trees]) for i in range(len(first)))


class ParticleStep:
    """The learned optimizer's step for M copies at once, each with its own weights: (M, D) flat weights, grads
    (M, P) and a state whose tensors lead with M -> (updates (M, P), state)."""

    def __init__(self, net: LearnedRule):
        self.module = _Stepper(net)
        named = list(self.module.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        buffers = dict(self.module.named_buffers())

        def one(params, grad, state, t):
            return functional_call(self.module, {**params, **buffers}, (grad, state, t))

        self.vstep = vmap(one, in_dims=(0, 0, 0, None), randomness="different")
        # an optimizer that steps many weight copies itself (the LSTM: one batched matmul per layer) does it faster
        # than vmap's batching of its module call
        self.copies = getattr(net, "step_copies", None)
        self.per_call = getattr(net, "coordinates_per_call", COORDINATES_PER_CALL)
        self.vinit = vmap(net.init_state, randomness="different")

    def init_state(self, theta: torch.Tensor):
        return self.vinit(theta.unsqueeze(1))

    def __call__(self, weights: torch.Tensor, grad: torch.Tensor, state, t: int):
        m, p = grad.shape
        group = m if grad.device.type != "cpu" else max(1, self.per_call // p)
        if group >= m:
            return self._step(weights, grad, state, t)
        pieces = [self._step(weights[s], grad[s], map_tensors(state, lambda x, s=s: x[s]), t)
                  for s in (slice(first, first + group) for first in range(0, m, group))]
        return torch.cat([u for u, _ in pieces]), _cat([st for _, st in pieces])

    def _step(self, weights: torch.Tensor, grad: torch.Tensor, state, t: int):
        params = unflatten_rows(weights, self.names, self.shapes)
        if self.copies is not None:
            return self.copies({name.removeprefix("net."): value for name, value in params.items()}, grad, state, t)
        update, state = self.vstep(params, grad.unsqueeze(1), state, t)
        return update.squeeze(1), state


def copies_per_function(pairs: int, persistent: bool) -> int:
    """pairs (+), pairs (-), and for es one unperturbed copy that carries the run."""
    return 2 * pairs + (0 if persistent else 1)


class PerturbedRun(EstimatorRun):
    """One optimizee run of a batch of functions, meta-gradients by ES or PES (``persistent``).

    ``rows``: (first, last + 1, total) when this batch is a rank's share of ``total`` functions: every rank draws
    the perturbations of all of them from the shared generator and uses its own, so ranks stay in step.
    """

    def __init__(self, family: Family, problem, net: LearnedRule, gen: torch.Generator, *, sigma: float,
                 pairs: int, persistent: bool, weighting: str = "uniform", rows=None, shared: bool = False,
                 horizon=None):
        self.family, self.net, self.gen = family, net, gen
        self.sigma, self.pairs, self.persistent, self.weighting = sigma, pairs, persistent, weighting
        # shared: one perturbation per pair for every function of the batch, so a replica's weights step all its
        # functions' coordinates as one copy (one matmul per layer over n x P coordinates)
        self.shared = shared
        check(not shared or net.coordinatewise, "estimator.shared",
              f"needs a coordinatewise learned optimizer (one whose update of a coordinate depends on that coordinate "
              f"alone); {net.name} is not")
        self.n = len(problem)
        self.rows = rows or (0, self.n, self.n)
        self.replicas = copies_per_function(pairs, persistent)  # copy r * n + b is function b
        self.problem = family.repeat(problem, self.replicas)
        self.params = list(net.parameters())
        bind_to_family(net, family, problem, horizon)
        self.stepper = ParticleStep(net)
        with torch.no_grad():
            self.theta = family.initial_params(self.problem)
            self.state = self.stepper.init_state(self._copies(self.theta))
        _, self.grad = loss_and_grad(family, self.problem, self.theta, 0)
        self.xi = None  # pes: each (+) copy's perturbations summed over the run so far; the (-) copy's is -xi

    def _replicas(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(self.replicas, self.n, *tensor.shape[1:])

    def _copies(self, rows: torch.Tensor) -> torch.Tensor:
        """(replicas * n, P) rows -> what the stepper steps: one copy per row, or with shared perturbations one per
        replica, (replicas, n * P)."""
        return rows.reshape(self.replicas, -1) if self.shared else rows

    def _restart_from_center(self) -> None:
        """es: every perturbed copy starts the truncation where the unperturbed one is (in place)."""
        def restart(x, by_replica=False):
            copies = x if by_replica else self._replicas(x)
            copies[:-1] = copies[-1]
            return x
        for tensor in (self.theta, self.grad):
            restart(tensor)
        map_tensors(self.state, lambda x: restart(x, by_replica=self.shared))

    def _perturbations(self, dim: int, device, dtype) -> torch.Tensor:
        """(pairs, n, D), or (pairs, 1, D) when shared (every function's copy the same)."""
        first, stop, total = self.rows
        if self.shared:
            return (torch.randn(self.pairs, 1, dim, generator=self.gen, dtype=dtype) * self.sigma).to(device)
        eps = torch.randn(self.pairs, total, dim, generator=self.gen, dtype=dtype)[:, first:stop]
        return (eps * self.sigma).to(device)

    @torch.no_grad()
    def unroll(self, start: int, steps: int) -> UnrollGradient:
        phi = parameters_to_vector(self.params).detach()
        eps = self._perturbations(phi.numel(), phi.device, phi.dtype)  # (pairs, n, D)
        parts = [eps, -eps] + ([] if self.persistent else [torch.zeros_like(eps[:1])])
        weights = (phi + torch.cat(parts)).reshape(-1, phi.numel())  # (replicas * n, D)
        if self.persistent:
            self.xi = eps.clone() if self.xi is None else self.xi + eps
            xi = self.xi
        else:
            self._restart_from_center()
            xi = eps
        theta, state, grad = self.theta, self.state, self.grad
        objective = torch.zeros(theta.shape[0], dtype=theta.dtype, device=theta.device)
        loss_sum = theta.new_zeros(())
        for k in range(steps):
            update, state = self.stepper(weights, self._copies(grad), state, start + k)
            theta = theta + update.view_as(theta)
            losses, grad = loss_and_grad(self.family, self.problem, theta, start + k + 1)
            objective += step_terms(losses, self.weighting, k == steps - 1)
            loss_sum += self._reported(losses).mean()
        self.theta, self.state, self.grad = theta, state, grad
        per_copy = self._replicas(objective)
        difference = per_copy[:self.pairs] - per_copy[self.pairs:2 * self.pairs]  # (pairs, n)
        flat = torch.einsum("pnd,pn->d", xi.expand(-1, self.n, -1), difference) / (
            2 * self.sigma ** 2 * self.pairs * self.n)
        return UnrollGradient(split_like(flat, self.params), loss_sum, self._reported(losses))

    def _reported(self, losses: torch.Tensor) -> torch.Tensor:
        """Per function, the losses the run reports: the unperturbed copy's (es), the perturbed copies' mean (pes:
        it has no unperturbed copy)."""
        copies = self._replicas(losses)
        return copies.mean(0) if self.persistent else copies[-1]


@dataclass
class PerturbationConfig(EstimatorConfig):
    """The perturbations of es and pes (Gaussian, antithetic, per optimizee)."""

    sigma: float = 0.01  # standard deviation of each weight's perturbation
    pairs: int = 2  # antithetic pairs (+eps, -eps) per optimizee: 2 x pairs perturbed copies of each function
    # one perturbation per pair for all the functions of a batch (not one per function): each copy's learned step is
    # one matmul per layer over every function's coordinates, several times faster on small functions, with fewer
    # independent directions per estimate (pairs instead of pairs x functions)
    shared: bool = False

    def __post_init__(self) -> None:
        check(math.isfinite(self.sigma) and self.sigma > 0, "estimator.sigma",
              f"must be a positive number, got {self.sigma}")
        check_at_least_one(self, "estimator.", ("pairs",))


class PerturbationEstimator(Estimator):
    """es and pes: every perturbed copy's step is one vmapped call of the eager module, never compiled."""

    differentiates = False
    compiles = False
    persistent = False

    def start(self, family, problem, *, gen, weighting, rows=None, horizon=None) -> PerturbedRun:
        return PerturbedRun(family, problem, self.net, gen, sigma=self.config.sigma, pairs=self.config.pairs,
                            persistent=self.persistent, weighting=weighting, rows=rows, shared=self.config.shared,
                            horizon=horizon)
