"""One optimizee run of meta-training: its truncations one after another, a meta-update after each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from l2l_cli.optimizers.learned.base import LearnedRule


@dataclass
class RunStats:
    mean_loss: float  # mean optimizee loss over the run's steps and functions
    final_loss: float
    skipped_updates: int  # meta-updates dropped because the loss or meta-gradient was not finite
    updates: int
    finite: list  # per unroll: whether its meta-update was applied
    grad_norm: float  # last meta-gradient norm before clipping


def meta_train_run(run, net: LearnedRule, meta_opt: torch.optim.Optimizer, lengths, clip_grad: float | None = None,
                   balance: Optional[Callable[[float], float]] = None) -> RunStats:
    """One optimizee run of sum(lengths) steps, cut into truncations of those lengths, with a meta-update after
    each. ``run``: an estimator's run (``estimators.base.EstimatorRun``; ``distributed.DistributedRun`` all-reduces
    a rank's share). ``balance``: the factor for a finite meta-gradient of a given norm, applied before clipping
    (``balance.GroupBalance``)."""
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
        # with balancing, the norm before clipping (what the balance reads); it clips after scaling
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad and balance is None else float("inf"))
        # one host sync per unroll: a non-finite loss or meta-gradient must never reach the parameters
        finite.append(bool(torch.isfinite(norm + result.loss_sum).item()))
        if finite[-1]:
            if balance is not None:
                torch._foreach_mul_([p.grad for p in params if p.grad is not None], balance(float(norm)))
                if clip_grad:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad)
            meta_opt.step()
        loss_total = loss_total + result.loss_sum
        start += steps
    return RunStats(mean_loss=float(loss_total) / num_steps, final_loss=float(result.final.mean()),
                    skipped_updates=finite.count(False), updates=finite.count(True), finite=finite,
                    grad_norm=float(norm))
