"""One optimizee run of meta-training, cut into truncated unrolls with a meta-update after each."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2l_cli.optimizees.base import Family, loss_and_grad
from l2l_cli.optimizers.base import LearnedOptimizer, bind_to_family


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


def unroll_objective(family: Family, problem, net: LearnedOptimizer, theta, state, grad, first_step: int,
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


@dataclass
class UnrollGradient:
    grads: list  # dJ/dphi in net.parameters() order
    loss_sum: torch.Tensor  # sum over the unroll's steps of the mean loss over functions
    final: torch.Tensor  # per-function losses after the unroll's last step


class OptimizeeRun:
    """One optimizee run of a batch of functions in this process, cut into truncated unrolls: theta, the learned
    optimizer's state and the gradient at theta carry over from one unroll to the next, the graph does not.

    ``manual``: the architecture's hand-written BPTT (``LearnedOptimizer.manual_bptt``), which computes the
    first-order meta-gradient without autograd (the same numbers, faster); None or second_order: autograd through
    ``unroll_objective``.
    """

    def __init__(self, family: Family, problem, net: LearnedOptimizer, second_order: bool = False,
                 weighting: str = "uniform", manual=None):
        self.family, self.problem, self.net = family, problem, net
        self.second_order, self.weighting = second_order, weighting
        self.manual = None if second_order else manual
        self.theta = family.initial_params(problem)
        bind_to_family(net, family)
        self.state = net.init_state(self.theta)
        _, self.grad = loss_and_grad(family, problem, self.theta, 0)

    def unroll(self, start: int, steps: int) -> UnrollGradient:
        """Steps start+1 .. start+steps, and the meta-gradient of their objective (each function's term a mean over
        this run's functions)."""
        if self.manual is not None:
            result = self.manual.unroll(self.family, self.problem, self.theta, self.state, self.grad, start, steps,
                                        self.weighting)
            grads, loss_sum, final = result.grads, result.loss_sum, result.final
            theta, state, grad = result.theta, result.state, result.grad
        else:
            grad = self.grad if self.second_order else self.grad.detach()
            objective, loss_sum, final, theta, state, grad = unroll_objective(
                self.family, self.problem, self.net, self.theta, self.state, grad, start, steps, self.second_order,
                self.weighting)
            params = list(self.net.parameters())
            grads = torch.autograd.grad(objective, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        self.theta, self.state, self.grad = theta.detach(), self.net.detach_state(state), grad.detach()
        return UnrollGradient(grads, loss_sum.detach(), final.detach())


def meta_train_run(run, net: LearnedOptimizer, meta_opt: torch.optim.Optimizer, lengths, clip_grad: float | None = None
                   ) -> RunStats:
    """Truncated BPTT over one optimizee run of sum(lengths) steps, cut into unrolls of those lengths, with a
    meta-update after each. ``run``: an ``OptimizeeRun``, or anything with its ``unroll(start, steps)``
    (``distributed.DistributedRun`` all-reduces a rank's share)."""
    loss_total = 0.0
    finite = []
    norm = torch.zeros(())
    params = list(net.parameters())
    num_steps, start = sum(lengths), 0
    for steps in lengths:
        meta_opt.zero_grad(set_to_none=True)
        result = run.unroll(start, steps)
        for p, g in zip(params, result.grads, strict=True):
            p.grad = g
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else float("inf"))
        # one host sync per unroll: a non-finite loss or meta-gradient must never reach the parameters
        finite.append(bool(torch.isfinite(norm + result.loss_sum).item()))
        if finite[-1]:
            meta_opt.step()
        loss_total = loss_total + result.loss_sum
        start += steps
    return RunStats(mean_loss=float(loss_total) / num_steps, final_loss=float(result.final.mean()),
                    skipped_updates=finite.count(False), updates=finite.count(True), finite=finite,
                    grad_norm=float(norm))
