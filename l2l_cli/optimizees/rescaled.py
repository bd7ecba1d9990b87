"""Random scaling (Lv et al. 2017), a meta-training augmentation for any family: each training function f becomes
f(s * theta') with one scale s = exp(U(-c, c)) per coordinate and function, optimised over theta' from
theta'_0 = theta_0 / s. The same problems at every scale of their parameters, so an optimizer cannot learn the
training functions' scale. With a per-tensor range c_t as well (task augmentation as in Metz et al.'s learned
optimizers), s is multiplied by one exp(U(-c_t, c_t)) per named tensor and function. Validation and evaluation use
the family itself, never this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from l2l_cli.optimizees.base import batch_group, parameter_layout


@dataclass
class RescaledProblems:
    problem: Any  # the family's own batch of problems
    scale: torch.Tensor  # (n, num_params): s

    def __len__(self) -> int:
        return len(self.problem)


class RescaledFamily:
    """``family`` with every sampled function's coordinates rescaled by exp(U(-c, c)) (``train.random_scale``),
    times exp(U(-c_t, c_t)) per named tensor (``per_tensor``)."""

    def __init__(self, family, c: float, per_tensor: float = 0.0):
        self.family, self.c, self.per_tensor = family, float(c), float(per_tensor)
        self.num_params = family.num_params
        self.stationary = family.stationary
        tensors = getattr(family, "tensors", None)
        if tensors:  # parameter groups see the family's own tensors
            self.tensors = tensors

    def sample(self, n: int, num_steps: int, gen: torch.Generator, device=None, split: str = "train"):
        problem = self.family.sample(n, num_steps, gen, device, split=split)
        theta = self.family.initial_params(problem)
        u = torch.rand(n, theta.shape[1], generator=gen, dtype=torch.float64)  # the generator is the CPU's
        log_scale = (2 * u - 1) * self.c
        if self.per_tensor > 0:
            sizes = torch.tensor([size for _, size in parameter_layout(self.family, problem)])
            per = (2 * torch.rand(n, len(sizes), generator=gen, dtype=torch.float64) - 1) * self.per_tensor
            log_scale = log_scale + per.repeat_interleave(sizes, dim=1)
        return RescaledProblems(problem, torch.exp(log_scale).to(device=theta.device, dtype=theta.dtype))

    def initial_params(self, problem: RescaledProblems) -> torch.Tensor:
        return self.family.initial_params(problem.problem) / problem.scale

    def select(self, problem: RescaledProblems, start: int, stop: int) -> RescaledProblems:
        return RescaledProblems(self.family.select(problem.problem, start, stop), problem.scale[start:stop])

    def repeat(self, problem: RescaledProblems, times: int) -> RescaledProblems:
        return RescaledProblems(self.family.repeat(problem.problem, times), problem.scale.repeat(times, 1))

    def loss(self, problem: RescaledProblems, theta: torch.Tensor, step: int) -> torch.Tensor:
        return self.family.loss(problem.problem, theta * problem.scale, step)

    def analytic_loss_and_grad(self, problem: RescaledProblems, theta: torch.Tensor, step: int):
        analytic = self.family.analytic_loss_and_grad(problem.problem, theta * problem.scale, step)
        if analytic is None:
            return None
        losses, grad = analytic
        return losses, grad * problem.scale  # chain rule: d f(s theta') / d theta' = s * f'(s theta')

    def expected_loss(self, problem: RescaledProblems, theta: torch.Tensor) -> torch.Tensor:
        return self.family.expected_loss(problem.problem, theta * problem.scale)

    def data_record(self):
        return self.family.data_record()

    def horizon_of(self, problem: RescaledProblems):
        horizon_of = getattr(self.family, "horizon_of", None)
        return horizon_of(problem.problem) if callable(horizon_of) else None

    def group_of(self, problem: RescaledProblems):
        return batch_group(self.family, problem.problem)

    def tensors_of(self, problem: RescaledProblems):
        """The family's named tensors for this batch (a family whose batches differ in shape has its own)."""
        return [(name, (size,)) for name, size in parameter_layout(self.family, problem.problem)]


def training_family(family, random_scale: float):
    """What meta-training samples its functions from: the family, or its randomly rescaled version."""
    return RescaledFamily(family, random_scale) if random_scale > 0 else family
