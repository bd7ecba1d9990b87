"""What every optimizee family provides: sample a batch of problems, per-function loss, gradient."""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch

from l2l_cli.core.memory import FLOAT_BYTES, check_fits
from l2l_cli.core.random_streams import generator
from l2l_cli.core.user_files import UserFileError


class DataError(UserFileError):
    """Data an optimizee family needs is missing or malformed; the message names the files it expected."""


class Family(Protocol):
    """A distribution over functions. A batch of B problems has parameters theta of shape (B, num_params).

    Built from its config dataclass: ``Family(cfg)``. Problems of one batch are independent: function i's losses
    and gradients depend on row i of theta alone, and ``select`` cuts a batch into parts that compute the same.

    Optional: ``tensors``, a list of (name, shape) naming theta's columns in order (``conv1.weight``, ...), which
    parameter-group rules match; without it theta is one tensor called 'theta'.

    Optional: ``problem_floats(num_steps)``, the floats one sampled function holds (a quadratic's W, y and theta_0):
    what ``problem_bytes`` checks against the machine's memory before a batch is sampled; without it, a few per
    parameter.

    Optional: ``pictures(problem, results) -> {column: images (n, 3, H, W) in [0, 1]}`` for a family whose
    parameters are images (``results``: optimizer name -> final theta); evaluation then writes an image grid.
    """

    num_params: int
    # the loss does not depend on the step (no minibatches): the hand-written BPTT may then evaluate the closed-form
    # gradient inside its compiled step
    stationary: bool

    def sample(self, n: int, num_steps: int, gen: torch.Generator, device: torch.device, split: str = "train") -> Any:
        """n problems with everything they need for num_steps steps (data, minibatch order, theta_0), drawn from
        the ``split`` ('train' | 'validation' | 'test') part of the family where it has data pools."""

    def initial_params(self, problem: Any) -> torch.Tensor:
        """theta_0, shape (n, num_params)."""

    def select(self, problem: Any, start: int, stop: int) -> Any:
        """Functions start..stop-1 of a batch of problems, exactly as they are in it (a worker's share)."""

    def repeat(self, problem: Any, times: int) -> Any:
        """The batch ``times`` times over: function r * n + b is function b, same data and minibatches (the perturbed
        copies of evolution-strategies meta-gradients)."""

    def loss(self, problem: Any, theta: torch.Tensor, step: int) -> torch.Tensor:
        """Per-function losses, shape (n,), differentiable in theta."""

    def analytic_loss_and_grad(self, problem: Any, theta: torch.Tensor, step: int):
        """(losses, grads) without autograd, or None where the family has no closed form."""

    def expected_loss(self, problem: Any, theta: torch.Tensor) -> torch.Tensor:
        """Per-function loss at theta averaged over the function's data randomness (its whole image set where it
        draws minibatches; the loss itself for deterministic functions), shape (n,)."""

    def data_record(self) -> dict | None:
        """Where the family's data came from (sizes, source, index fingerprints) for results.json; None without
        data."""


def parameter_layout(family: Family, problem: Any = None) -> tuple[tuple[str, int], ...]:
    """(name, size) of each named tensor in theta's columns, in order: a family's optional ``tensors`` (name,
    shape) list (or, for a family whose batches differ in shape, ``tensors_of(problem)``), or one tensor called
    'theta'. What parameter-group rules (``optimizer=lstm_sep``) match."""
    import math

    tensors_of = getattr(family, "tensors_of", None)
    if problem is not None and callable(tensors_of):
        return tuple((name, math.prod(shape)) for name, shape in tensors_of(problem))
    tensors = getattr(family, "tensors", None)
    if not tensors:
        return (("theta", family.num_params),)
    return tuple((name, math.prod(shape)) for name, shape in tensors)


def run_horizon(family: Family, problem: Any, default: int) -> int:
    """The run length of a batch: a family's own ``horizon_of(problem)`` (a mixture draws one per batch), else
    ``default`` (the schedule's)."""
    horizon_of = getattr(family, "horizon_of", None)
    return (horizon_of(problem) if callable(horizon_of) else None) or default


def batch_group(family: Family, problem: Any) -> Optional[str]:
    """Which group of a mixed family a batch is from (``group_of(problem)``: a mixture's member), else None."""
    group_of = getattr(family, "group_of", None)
    return group_of(problem) if callable(group_of) else None


def map_tensors(obj: Any, fn) -> Any:
    """``obj`` (a tensor, or dicts, lists, tuples and dataclasses of them) with every tensor t replaced by fn(t)."""
    import dataclasses

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def loss_and_grad(family: Family, problem: Any, theta: torch.Tensor, step: int, create_graph: bool = False):
    """Per-function losses and d loss / d theta.

    With ``create_graph`` the gradient stays differentiable w.r.t. everything theta depends on (second-order
    meta-gradients). Otherwise both are plain values: analytic where the family allows, autograd on a detached
    copy of theta elsewhere.
    """
    if create_graph:
        with torch.enable_grad():
            losses = family.loss(problem, theta, step)
            (grad,) = torch.autograd.grad(losses.sum(), theta, create_graph=True)
        return losses, grad
    theta = theta.detach()
    analytic = family.analytic_loss_and_grad(problem, theta, step)
    if analytic is not None:
        return analytic
    with torch.enable_grad():
        theta = theta.requires_grad_()
        losses = family.loss(problem, theta, step)
        (grad,) = torch.autograd.grad(losses.sum(), theta)
    return losses.detach(), grad


def problem_bytes(family: Family, n: int, num_steps: int) -> int:
    """A lower bound of the memory ``n`` sampled functions hold (``Family.problem_floats``)."""
    floats = getattr(family, "problem_floats", None)
    per_function = floats(num_steps) if callable(floats) else 2 * family.num_params
    return n * int(per_function) * FLOAT_BYTES


def check_problems_fit(family: Family, n: int, num_steps: int, key: str) -> None:
    """One line naming the keys when ``n`` functions of this family cannot fit in the memory available."""
    check_fits(problem_bytes(family, n, num_steps), f"{n} functions of {family.num_params} parameters",
               f"optimizee size / {key}")


def held_out_problems(family: Family, n: int, num_steps: int, data_seed: int, split: str, device="cpu",
                      key: str = "the number of functions"):
    """The fixed validation or test problems: their own seed stream, and their own data pool where there is one.
    ``key``: the config key that set ``n``, named when they cannot fit in memory."""
    check_problems_fit(family, n, num_steps, key)
    return family.sample(n, num_steps, generator(data_seed, split), device, split=split)
