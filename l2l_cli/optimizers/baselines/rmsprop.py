"""RMSprop (Tieleman & Hinton, 2012) as torch.optim.RMSprop computes it (no momentum, not centered)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.baselines.base import Baseline, BaselineConfig


@dataclass
class RMSpropConfig(BaselineConfig):
    alpha: float = 0.99  # decay of the mean square (torch's default)
    eps: float = 1e-8

    def check_fields(self) -> None:
        self.check_decay("alpha")
        self.check_positive("eps")


class RMSprop(Baseline):
    def step(self, grad: torch.Tensor, state: dict, t: int):
        alpha = self.cfg.alpha
        sq = state.get("sq", torch.zeros_like(grad))
        sq = sq * alpha + (1 - alpha) * grad * grad
        state["sq"] = sq
        return -self.lr * grad / (sq.sqrt() + self.cfg.eps), state

    def torch_reference(self, params):
        return torch.optim.RMSprop(params, lr=self.lr, alpha=self.cfg.alpha, eps=self.cfg.eps, foreach=False)


OPTIMIZERS.register("rmsprop", RMSpropConfig, RMSprop)
