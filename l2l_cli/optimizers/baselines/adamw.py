"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay, as torch.optim.AdamW computes it
(theta *= 1 - lr * weight_decay, then the Adam step)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.baselines.adam import Adam, AdamConfig


@dataclass
class AdamWConfig(AdamConfig):
    weight_decay: float = 0.01  # torch's default

    def check_fields(self) -> None:
        super().check_fields()
        self.check_non_negative("weight_decay")


class AdamW(Adam):
    """The decay needs theta, which ``step`` is not given: the state keeps it, advanced by each update returned (the
    caller's theta + update, bit for bit)."""

    def init_state(self, theta: torch.Tensor) -> dict:
        return {"theta": theta}

    def step(self, grad: torch.Tensor, state: dict, t: int):
        theta = state["theta"]
        adam_update, state = super().step(grad, state, t)
        update = adam_update - (self.lr * self.cfg.weight_decay) * theta
        state["theta"] = theta + update
        return update, state

    def torch_reference(self, params):
        return torch.optim.AdamW(params, lr=self.lr, betas=(self.cfg.beta1, self.cfg.beta2), eps=self.cfg.eps,
                                 weight_decay=self.cfg.weight_decay, foreach=False)


OPTIMIZERS.register("adamw", AdamWConfig, AdamW)
