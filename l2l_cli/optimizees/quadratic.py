"""The paper's quadratic family: f(theta) = ||W theta - y||^2 with a new W and y for every function."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuadraticProblems:
    W: torch.Tensor  # (n, dim, dim)
    y: torch.Tensor  # (n, dim)
    theta0: torch.Tensor  # (n, dim)

    def __len__(self) -> int:
        return self.W.shape[0]


class QuadraticFamily:
    """``gaussian``: W, y ~ N(0, 1) (the paper). ``uniform``: W, y ~ U[0, 1) (the original code).

    theta_0 ~ N(0, init_std^2) per coordinate (the code uses 0.01).
    """

    stationary = True  # the same function at every step

    def __init__(self, dim: int = 10, distribution: str = "gaussian", init_std: float = 0.01):
        self.dim = dim
        self.num_params = dim
        self.distribution = distribution
        self.init_std = init_std

    def sample(self, n: int, num_steps: int, gen: torch.Generator, device="cpu", split: str = "train"):
        """The split only names the seed stream the caller chose; W, y are drawn from the same distribution."""
        draw = torch.randn if self.distribution == "gaussian" else torch.rand
        W = draw(n, self.dim, self.dim, generator=gen)
        y = draw(n, self.dim, generator=gen)
        theta0 = torch.randn(n, self.dim, generator=gen) * self.init_std
        return QuadraticProblems(W.to(device), y.to(device), theta0.to(device))

    def initial_params(self, problem: QuadraticProblems) -> torch.Tensor:
        return problem.theta0.clone()

    def select(self, problem: QuadraticProblems, start: int, stop: int) -> QuadraticProblems:
        return QuadraticProblems(problem.W[start:stop], problem.y[start:stop], problem.theta0[start:stop])

    def _residual(self, problem: QuadraticProblems, theta: torch.Tensor) -> torch.Tensor:
        return torch.bmm(problem.W, theta.unsqueeze(-1)).squeeze(-1) - problem.y

    def loss(self, problem: QuadraticProblems, theta: torch.Tensor, step: int) -> torch.Tensor:
        return self._residual(problem, theta).pow(2).sum(-1)

    def expected_loss(self, problem: QuadraticProblems, theta: torch.Tensor) -> torch.Tensor:
        return self.loss(problem, theta, 0)  # deterministic: no data randomness

    def analytic_loss_and_grad(self, problem: QuadraticProblems, theta: torch.Tensor, step: int):
        r = self._residual(problem, theta)
        grad = 2.0 * torch.bmm(r.unsqueeze(1), problem.W).squeeze(1)  # 2 W^T r
        return r.pow(2).sum(-1), grad
