"""Run any optimizer (learned or baseline) on a batch of problems and record the loss at every step."""

from __future__ import annotations

import torch

from l2l_cli.optimizees.base import Family, loss_and_grad


def rollout(family: Family, problem, rule, num_steps: int) -> torch.Tensor:
    """Losses of shape (num_steps + 1, B): row 0 at theta_0, row t after t updates."""
    return run(family, problem, rule, num_steps)[0]


@torch.no_grad()
def run(family: Family, problem, rule, num_steps: int):
    """(losses (num_steps + 1, B), the final parameters)."""
    theta = family.initial_params(problem)
    state = rule.init_state(theta)
    losses, grad = loss_and_grad(family, problem, theta, 0)
    record = [losses]
    for t in range(num_steps):
        update, state = rule.step(grad, state, t)
        theta = theta + update
        losses, grad = loss_and_grad(family, problem, theta, t + 1)
        record.append(losses)
    return torch.stack(record), theta


@torch.no_grad()
def selection_score(family: Family, problem, rule, num_steps: int) -> float:
    """What validation selects on, for the learned optimizer's checkpoints and the baselines' learning rates alike:
    the mean over functions of the expected final loss (its mean over every minibatch the function could draw,
    where the family has data), +inf when any run diverged. The same target as the test's final minibatch loss,
    with the minibatch noise (about 2/3 of the spread between MNIST runs) taken out."""
    losses, theta = run(family, problem, rule, num_steps)
    if not torch.isfinite(losses).all():
        return float("inf")
    final = family.expected_loss(problem, theta)
    return float(final.mean()) if torch.isfinite(final).all() else float("inf")
