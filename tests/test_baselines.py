"""The functional baselines against torch.optim, and batch independence: a batch of B functions gives exactly
what B separate torch.optim runs give."""

import math

import pytest
import torch

from l2l_cli.evaluation import tune_learning_rate
from l2l_cli.optimizees.quadratic import QuadraticConfig, QuadraticFamily
from l2l_cli.optimizers.baselines import Baseline, baseline_config
from l2l_cli.rollout import rollout
from l2l_cli.schemas import BaselineConfig
from l2l_cli.seeding import generator

TORCH_EQUIVALENT = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "nag": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
}


@pytest.mark.parametrize("name", sorted(TORCH_EQUIVALENT))
@pytest.mark.parametrize("lr", [0.003, 0.1])
def test_batch_equals_separate_torch_optim_runs(name, lr):
    family = QuadraticFamily(QuadraticConfig(dim=5))
    problem = family.sample(4, 15, generator(0, "test"))
    problem.W, problem.y, problem.theta0 = problem.W.double(), problem.y.double(), problem.theta0.double()
    batched = rollout(family, problem, Baseline(baseline_config(name), lr), 15)
    for b in range(4):
        theta = problem.theta0[b].clone().requires_grad_()
        opt = TORCH_EQUIVALENT[name]([theta], lr)
        losses = []
        for _ in range(16):
            loss = (problem.W[b] @ theta - problem.y[b]).pow(2).sum()
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.testing.assert_close(batched[:, b], torch.tensor(losses, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_nag_differs_from_plain_momentum():
    family = QuadraticFamily(QuadraticConfig(dim=5))
    problem = family.sample(2, 10, generator(0, "test"))
    nag = rollout(family, problem, Baseline(baseline_config("nag"), 0.01), 10)
    heavy_ball_cfg = BaselineConfig(name="nag", momentum=0.9, nesterov=False)
    heavy_ball = rollout(family, problem, Baseline(heavy_ball_cfg, 0.01), 10)
    assert not torch.allclose(nag, heavy_ball)


def test_learning_rate_refinement_around_the_grid_optimum():
    family = QuadraticFamily(QuadraticConfig(dim=5))
    problem = family.sample(16, 20, generator(0, "validation"))
    cfg = baseline_config("adam")
    coarse = tune_learning_rate(family, problem, cfg, [0.001, 0.1, 10.0], 20)
    refined = tune_learning_rate(family, problem, cfg, [0.001, 0.1, 10.0], 20, refine=2)
    assert set(coarse.scores) < set(refined.scores) and len(refined.scores) == 7
    assert refined.scores[refined.lr] == min(refined.scores.values()) <= coarse.scores[coarse.lr]
    factor = 10 ** 0.25
    assert any(abs(lr - coarse.lr * factor) < 1e-12 or abs(lr - coarse.lr / factor) < 1e-12 for lr in refined.scores)
    assert not refined.at_grid_edge
    too_small = tune_learning_rate(family, problem, cfg, [1e-5, 1e-4], 20, refine=1)
    assert too_small.at_grid_edge and too_small.lr > 1e-4  # refinement went past the grid's end: flagged


def test_a_baseline_that_reaches_zero_loss_gives_ratios_not_a_crash():
    """A tuned baseline can land exactly on the minimum (final loss 0.0 in float32): the table's ratios to it are
    inf (worse) or 1 (equal), never a ZeroDivisionError."""
    from l2l_cli.console import console, results_table
    from l2l_cli.evaluation import curve_stats, ratio

    losses = {"lstm": torch.tensor([[1.0, 1.0], [0.5, 0.0]]), "nag": torch.tensor([[1.0, 1.0], [0.0, 0.0]])}
    stats = {name: curve_stats(value) for name, value in losses.items()}
    with console().capture() as captured:
        console().print(results_table(stats, {}, "lstm", "nag", "zero"))
    assert "inf" in captured.get()
    assert (ratio(0.5, 0.0), ratio(0.0, 0.0), ratio(0.3, 0.6)) == (math.inf, 1.0, 0.5)
