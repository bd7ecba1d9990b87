"""Run any optimizer (learned or baseline) on a batch of problems and record the loss at every step."""

from __future__ import annotations

import torch

from l2l_cli.optimizees.base import Family, loss_and_grad


@torch.no_grad()
def rollout(family: Family, problem, rule, num_steps: int) -> torch.Tensor:
    """Losses of shape (num_steps + 1, B): row 0 at theta_0, row t after t updates."""
    theta = family.initial_params(problem)
    state = rule.init_state(theta)
    losses, grad = loss_and_grad(family, problem, theta, 0)
    record = [losses]
    for t in range(num_steps):
        update, state = rule.step(grad, state, t)
        theta = theta + update
        losses, grad = loss_and_grad(family, problem, theta, t + 1)
        record.append(losses)
    return torch.stack(record)


def mean_final_loss(losses: torch.Tensor) -> float:
    """The selection metric: mean loss at the last step; a non-finite run makes it +inf."""
    final = losses[-1]
    if not torch.isfinite(final).all():
        return float("inf")
    return float(final.mean())
