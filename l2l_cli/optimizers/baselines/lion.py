"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2): the sign of an
interpolation of momentum and gradient, with decoupled weight decay. torch.optim has no Lion; the tests check it
against the published pseudo-code:

    c = beta1 * m + (1 - beta1) * g
    theta = theta - lr * (sign(c) + weight_decay * theta)
    m = beta2 * m + (1 - beta2) * g

Every coordinate moves by lr (times 1, 0 or -1) per step, so its tuned lr is typically 3-10x smaller than Adam's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.baselines.base import Baseline, BaselineConfig


@dataclass
class LionConfig(BaselineConfig):
    beta1: float = 0.9  # the interpolation the sign is taken of
    beta2: float = 0.99  # the momentum's decay
    weight_decay: float = 0.0

    def check_fields(self) -> None:
        self.check_decay("beta1", "beta2")
        self.check_non_negative("weight_decay")


class Lion(Baseline):
    """With weight decay the state keeps theta (``step`` is not given it), advanced by each update returned."""

    def init_state(self, theta: torch.Tensor) -> dict:
        return {"m": torch.zeros_like(theta), **({"theta": theta} if self.cfg.weight_decay else {})}

    def step(self, grad: torch.Tensor, state: dict, t: int):
        cfg, m = self.cfg, state["m"]
        direction = torch.sign(cfg.beta1 * m + (1 - cfg.beta1) * grad)
        if cfg.weight_decay:
            direction = direction + cfg.weight_decay * state["theta"]
        update = -self.lr * direction
        state["m"] = cfg.beta2 * m + (1 - cfg.beta2) * grad
        if cfg.weight_decay:
            state["theta"] = state["theta"] + update
        return update, state


OPTIMIZERS.register("lion", LionConfig, Lion)
