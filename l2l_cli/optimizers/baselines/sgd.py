"""SGD, with optional heavy-ball or Nesterov momentum, as torch.optim.SGD computes it (``nag`` is this rule with
Nesterov momentum 0.9: nag.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2l_cli.core.checks import check
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.baselines.base import Baseline, BaselineConfig


@dataclass
class SGDConfig(BaselineConfig):
    momentum: float = 0.0
    nesterov: bool = False

    def check_fields(self) -> None:
        self.check_decay("momentum")
        check(not self.nesterov or self.momentum > 0, "optimizer.nesterov", "needs optimizer.momentum > 0")


class SGD(Baseline):
    def step(self, grad: torch.Tensor, state: dict, t: int):
        momentum = self.cfg.momentum
        direction = grad
        if momentum > 0:
            buf = state.get("buf")
            buf = grad.clone() if buf is None else buf * momentum + grad
            state["buf"] = buf
            direction = grad + momentum * buf if self.cfg.nesterov else buf
        return -self.lr * direction, state

    def torch_reference(self, params):
        return torch.optim.SGD(params, lr=self.lr, momentum=self.cfg.momentum, nesterov=self.cfg.nesterov,
                               foreach=False)


OPTIMIZERS.register("sgd", SGDConfig, SGD)
