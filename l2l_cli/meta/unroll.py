"""One optimizee run of meta-training, cut into truncated unrolls with a meta-update after each."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2l_cli.optimizees.base import Family, loss_and_grad
from l2l_cli.optimizers.lstm import CoordinatewiseLSTM, detach_state


@dataclass
class RunStats:
    mean_loss: float  # mean optimizee loss over the run's steps and functions
    final_loss: float
    skipped_updates: int  # meta-updates dropped because the loss or meta-gradient was not finite
    updates: int
    finite: list  # per unroll: whether its meta-update was applied
    grad_norm: float  # last meta-gradient norm before clipping


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
        return losses.clamp_min(MIN_LOSS).log().mean() if weighting == "log" else losses.mean()
    return (step_weights(losses.detach(), weighting, last) * (grad * theta).sum(dim=1)).sum()


MIN_LOSS = 1e-12  # log weighting: keeps 1/f finite for a loss of exactly 0


def unroll_objective(family: Family, problem, net: CoordinatewiseLSTM, theta, state, grad, first_step: int,
                     steps: int, second_order: bool, weighting: str):
    """Run ``steps`` optimizee steps from (theta, state, grad) and return what the meta-update needs.

    The objective's gradient w.r.t. the LSTM is the meta-gradient of sum_t w_t mean_b f_b(theta_t).
    Without second derivatives the optimizee gradient g_t is a constant, so d f(theta_t)/d phi =
    g_t . d theta_t / d phi, and the surrogate sum_t w_t <stopgrad(g_t), theta_t> / B has exactly that gradient
    without keeping the optimizee's forward pass in the graph.
    """
    objective = theta.new_zeros(())
    loss_sum = theta.new_zeros(())
    for k in range(steps):
        update, state = net(grad.reshape(-1), state)
        theta = theta + update.view_as(theta)
        losses, grad = loss_and_grad(family, problem, theta, first_step + k + 1, create_graph=second_order)
        if weighting != "last" or k == steps - 1:
            objective = objective + step_objective(losses, grad, theta, second_order, weighting, k == steps - 1)
        loss_sum = loss_sum + losses.detach().mean()
    return objective, loss_sum, losses.detach(), theta, state, grad


def meta_train_run(family: Family, problem, net: CoordinatewiseLSTM, meta_opt: torch.optim.Optimizer,
                   num_steps: int, unroll: int, second_order: bool = False, clip_grad: float | None = None,
                   weighting: str = "uniform", manual=None) -> RunStats:
    """Truncated BPTT over one optimizee run: theta and the LSTM state carry on across unrolls, graph cut.

    ``manual``: a ``manual_bptt.ManualBPTT`` for ``net``, which computes the first-order meta-gradient without
    autograd (the same numbers, faster); None or second_order: autograd through ``unroll_objective``.
    """
    theta = family.initial_params(problem)
    state = net.initial_state(theta.numel(), theta.device, theta.dtype)
    _, grad = loss_and_grad(family, problem, theta, 0)
    loss_total = theta.new_zeros(())
    finite = []
    norm = torch.zeros(())
    params = list(net.parameters())
    for start in range(0, num_steps, unroll):
        steps = min(unroll, num_steps - start)
        meta_opt.zero_grad(set_to_none=True)
        if manual is not None and not second_order:
            result = manual.unroll(family, problem, theta, state, grad, start, steps, weighting)
            for p, g in zip(params, result.grads, strict=True):
                p.grad = g
            loss_sum, final, theta, state, grad = result.loss_sum, result.final, result.theta, result.state, result.grad
        else:
            objective, loss_sum, final, theta, state, grad = unroll_objective(
                family, problem, net, theta, state, grad if second_order else grad.detach(), start, steps,
                second_order, weighting)
            objective.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else float("inf"))
        # one host sync per unroll: a non-finite loss or meta-gradient must never reach the parameters
        finite.append(bool(torch.isfinite(norm + loss_sum).item()))
        if finite[-1]:
            meta_opt.step()
        loss_total = loss_total + loss_sum
        theta, state, grad = theta.detach(), detach_state(state), grad.detach()
    return RunStats(mean_loss=float(loss_total) / num_steps, final_loss=float(final.mean()),
                    skipped_updates=finite.count(False), updates=finite.count(True), finite=finite,
                    grad_norm=float(norm))
