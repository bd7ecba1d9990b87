"""Run any optimizer (learned or baseline) on a batch of problems and record the loss at every step.

Many functions go through in chunks (``chunk_functions``), each chunk from theta_0 to its last step before the next
starts: as many functions as the family computes best at once (its ``functions_per_chunk``, measured), within
``EVAL_COORDINATES`` coordinates (functions x parameters) so that the memory an evaluation holds at once (the
learned optimizer's state, the optimizee's activations) stops growing with the number of functions. Functions are
independent, so a chunk computes what it would inside the whole batch.
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from l2l_cli.core.spare_cores import take_spare_cores
from l2l_cli.optimizees.base import Family, loss_and_grad
from l2l_cli.optimizers.learned.base import bind_to_family

EVAL_COORDINATES = 2**19


def chunk_functions(family: Family) -> int:
    """How many functions of ``family`` one computation holds: its ``functions_per_chunk`` where it has one (the
    batch its loss runs fastest per function at), within EVAL_COORDINATES coordinates (one function at least)."""
    bound = max(1, EVAL_COORDINATES // max(1, family.num_params))
    return max(1, min(bound, getattr(family, "functions_per_chunk", bound)))


def function_chunks(n: int, per: int) -> List[Tuple[int, int]]:
    """(start, stop) bounds of consecutive functions, ``per`` in each chunk (the last may hold fewer)."""
    return [(start, min(n, start + per)) for start in range(0, n, per)]


def rollout(family: Family, problem, rule, num_steps: int) -> torch.Tensor:
    """Losses of shape (num_steps + 1, B): row 0 at theta_0, row t after t updates."""
    return run(family, problem, rule, num_steps, expected=False)[0]


@torch.no_grad()
def run(family: Family, problem, rule, num_steps: int, expected: bool = True):
    """(losses (num_steps + 1, B), each function's expected loss at its final parameters (B,), or None when
    ``expected`` is false), chunk by chunk."""
    bounds = function_chunks(len(problem), chunk_functions(family))
    if len(bounds) == 1:
        return _run(family, problem, rule, num_steps, expected)[:2]
    parts = [_run(family, family.select(problem, start, stop), rule, num_steps, expected)[:2]
             for start, stop in bounds]
    losses = torch.cat([losses for losses, _ in parts], dim=1)
    return losses, torch.cat([final for _, final in parts]) if expected else None


@torch.no_grad()
def final_params(family: Family, problem, rule, num_steps: int) -> torch.Tensor:
    """Each function's parameters after num_steps updates, (B, num_params): for the few functions a picture
    shows."""
    return _run(family, problem, rule, num_steps, expected=False)[2]


def _run(family: Family, problem, rule, num_steps: int, expected: bool):
    take_spare_cores()
    theta = family.initial_params(problem)
    bind_to_family(rule, family, problem, num_steps)
    state = rule.init_state(theta)
    losses, grad = loss_and_grad(family, problem, theta, 0)
    record = [losses]
    for t in range(num_steps):
        update, state = rule.step(grad, state, t)
        theta = theta + update
        losses, grad = loss_and_grad(family, problem, theta, t + 1)
        record.append(losses)
    return torch.stack(record), family.expected_loss(problem, theta) if expected else None, theta


@torch.no_grad()
def selection_score(family: Family, problem, rule, num_steps: int) -> float:
    """What validation selects on, for the learned optimizer's checkpoints and the baselines' learning rates alike:
    the mean over functions of the expected final loss (its mean over every minibatch the function could draw,
    where the family has data), +inf when any run diverged. The same target as the test's final minibatch loss,
    with the minibatch noise (about 2/3 of the spread between MNIST runs) taken out."""
    losses, final = run(family, problem, rule, num_steps)
    if not torch.isfinite(losses).all():
        return float("inf")
    return float(final.mean()) if torch.isfinite(final).all() else float("inf")
