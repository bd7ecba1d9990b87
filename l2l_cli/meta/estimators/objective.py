"""A truncation's meta-objective, sum_t w_t mean_b f_b(theta_t), and its first-order surrogate: shared by every
estimator (autograd, the hand-written BPTT and the perturbation estimators) so they optimise the same thing."""

from __future__ import annotations

import torch

from l2l_cli.optimizees.base import Family, loss_and_grad
from l2l_cli.optimizers.learned.base import LearnedRule


def step_weights(losses, weighting: str, last: bool):
    """Per-function weights c_b of a step's first-order term sum_b c_b <g_b, theta_b>: 1/B (uniform), 1/(B f_b) (log,
    since d log f = df / f), and for 'last' 1/B at the unroll's last step, 0 before it."""
    batch = losses.shape[0]
    if weighting == "log":
        return 1.0 / (batch * losses.clamp_min(MIN_LOSS))
    if weighting == "last" and not last:
        return torch.zeros_like(losses)
    return torch.full_like(losses, 1.0 / batch)


def step_objective(losses, grad, theta, second_order: bool, weighting: str, last: bool):
    """One step's term: mean_b f_b(theta), or mean_b log f_b(theta) (log weighting), or their first-order surrogate.

    d log f / d theta = g / f: the log objective is the uniform one with each function's term weighted by 1/f,
    so late steps (small losses) count as much as early ones, relative to their size.
    """
    if second_order:
        return step_terms(losses, weighting, last).mean()
    return (step_weights(losses.detach(), weighting, last) * (grad * theta).sum(dim=1)).sum()


def step_terms(losses, weighting: str, last: bool):
    """Each function's term of one step in its unroll's objective: f (uniform), log f (log), f at the unroll's last
    step only (last). Second-order BPTT and es / pes differentiate or perturb these themselves."""
    if weighting == "log":
        return losses.clamp_min(MIN_LOSS).log()
    if weighting == "last" and not last:
        return torch.zeros_like(losses)
    return losses


MIN_LOSS = 1e-12  # log weighting: keeps 1/f finite for a loss of exactly 0


def unroll_objective(family: Family, problem, net: LearnedRule, theta, state, grad, first_step: int,
                     steps: int, second_order: bool, weighting: str):
    """Run ``steps`` optimizee steps from (theta, state, grad) and return what the meta-update needs.

    The objective's gradient w.r.t. the learned optimizer is the meta-gradient of sum_t w_t mean_b f_b(theta_t).
    Without second derivatives the optimizee gradient g_t is a constant, so d f(theta_t)/d phi =
    g_t . d theta_t / d phi, and the surrogate sum_t w_t <stopgrad(g_t), theta_t> / B has exactly that gradient
    without keeping the optimizee's forward pass in the graph.
    """
    objective = theta.new_zeros(())
    loss_sum = theta.new_zeros(())
    for k in range(steps):
        update, state = net.step(grad, state, first_step + k)
        theta = theta + update
        losses, grad = loss_and_grad(family, problem, theta, first_step + k + 1, create_graph=second_order)
        if weighting != "last" or k == steps - 1:
            objective = objective + step_objective(losses, grad, theta, second_order, weighting, k == steps - 1)
        loss_sum = loss_sum + losses.detach().mean()
    return objective, loss_sum, losses.detach(), theta, state, grad
