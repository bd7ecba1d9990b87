"""Random scaling (Lv et al. 2017), a meta-training augmentation for any family: each training function f becomes
f(s * theta') with one scale s = exp(U(-c, c)) per coordinate and function, optimised over theta' from
theta'_0 = theta_0 / s. The same problems at every scale of their parameters, so an optimizer cannot learn the
training functions' scale. Validation and evaluation use the family itself, never this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class RescaledProblems:
    problem: Any  # the family's own batch of problems
    scale: torch.Tensor  # (n, num_params): s

    def __len__(self) -> int:
        return len(self.problem)


class RescaledFamily:
    """``family`` with every sampled function's coordinates rescaled by exp(U(-c, c)) (``train.random_scale``)."""

    def __init__(self, family, c: float):
        self.family, self.c = family, float(c)
        self.num_params = family.num_params
        self.stationary = family.stationary
        tensors = getattr(family, "tensors", None)
        if tensors:  # parameter groups see the family's own tensors
            self.tensors = tensors

    def sample(self, n: int, num_steps: int, gen: torch.Generator, device=None, split: str = "train"):
        problem = self.family.sample(n, num_steps, gen, device, split=split)
        u = torch.rand(n, self.num_params, generator=gen, dtype=torch.float64)  # the generator is the CPU's
        theta = self.family.initial_params(problem)
        scale = torch.exp((2 * u - 1) * self.c).to(device=theta.device, dtype=theta.dtype)
        return RescaledProblems(problem, scale)

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


def training_family(family, random_scale: float):
    """What meta-training samples its functions from: the family, or its randomly rescaled version."""
    return RescaledFamily(family, random_scale) if random_scale > 0 else family
