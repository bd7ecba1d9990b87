"""Adam (Kingma & Ba, 2015) as torch.optim.Adam computes it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.baselines.base import Baseline, BaselineConfig


@dataclass
class AdamConfig(BaselineConfig):
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def check_fields(self) -> None:
        self.check_decay("beta1", "beta2")
        self.check_positive("eps")


class Adam(Baseline):
    def step(self, grad: torch.Tensor, state: dict, t: int):
        cfg = self.cfg
        count = state.get("count", 0) + 1
        m = state.get("m", torch.zeros_like(grad))
        v = state.get("v", torch.zeros_like(grad))
        m = m + (grad - m) * (1 - cfg.beta1)  # torch's lerp
        v = v * cfg.beta2 + (1 - cfg.beta2) * grad * grad
        state.update(count=count, m=m, v=v)
        step_size = self.lr / (1 - cfg.beta1 ** count)
        denom = v.sqrt() / math.sqrt(1 - cfg.beta2 ** count) + cfg.eps
        return -step_size * m / denom, state

    def torch_reference(self, params):
        return torch.optim.Adam(params, lr=self.lr, betas=(self.cfg.beta1, self.cfg.beta2), eps=self.cfg.eps,
                                foreach=False)


OPTIMIZERS.register("adam", AdamConfig, Adam)
