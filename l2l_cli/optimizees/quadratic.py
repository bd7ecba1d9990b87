"""The paper's quadratic family: f(theta) = ||W theta - y||^2 with a new W and y for every function."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.core.schemas import OptimizeeConfig, check, check_at_least_one, check_choice

DISTRIBUTIONS = ("gaussian", "uniform")


@dataclass
class QuadraticConfig(OptimizeeConfig):
    """f(theta) = ||W theta - y||^2 with W dim x dim and y dim-d, drawn per function."""

    name: str = "quadratic"
    dim: int = 10
    batch_size: int = 128
    distribution: str = "gaussian"  # gaussian (the paper) | uniform (the original code)
    init_std: float = 0.01

    def check_fields(self) -> None:
        check_at_least_one(self, "optimizee.", ("dim",))
        check_choice(self.distribution, "optimizee.distribution", DISTRIBUTIONS)
        check(self.init_std >= 0, "optimizee.init_std", f"must be >= 0, got {self.init_std}")


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

    def __init__(self, cfg: QuadraticConfig):
        self.dim = cfg.dim
        self.num_params = cfg.dim
        self.distribution = cfg.distribution
        self.init_std = cfg.init_std

    def problem_floats(self, num_steps: int) -> int:
        return self.dim * self.dim + 2 * self.dim  # W, y, theta_0

    def sample(self, n: int, num_steps: int, gen: torch.Generator, device="cpu", split: str = "train"):
        """The split only names the seed stream the caller chose; W, y are drawn from the same distribution."""
        draw = torch.randn if self.distribution == "gaussian" else torch.rand
        W = draw(n, self.dim, self.dim, generator=gen)
        y = draw(n, self.dim, generator=gen)
        theta0 = torch.randn(n, self.dim, generator=gen) * self.init_std
        return QuadraticProblems(W.to(device), y.to(device), theta0.to(device))

    def data_record(self) -> None:
        return None  # no data: W and y are drawn from the seed

    def initial_params(self, problem: QuadraticProblems) -> torch.Tensor:
        return problem.theta0.clone()

    def select(self, problem: QuadraticProblems, start: int, stop: int) -> QuadraticProblems:
        return QuadraticProblems(problem.W[start:stop], problem.y[start:stop], problem.theta0[start:stop])

    def repeat(self, problem: QuadraticProblems, times: int) -> QuadraticProblems:
        return QuadraticProblems(problem.W.repeat(times, 1, 1), problem.y.repeat(times, 1),
                                 problem.theta0.repeat(times, 1))

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


OPTIMIZEES.register("quadratic", QuadraticConfig, QuadraticFamily)
