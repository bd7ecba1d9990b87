"""SGD, NAG, RMSprop and Adam as pure functions of (grad, state), numerically following torch.optim.

Working on a (B, P) tensor, they run B optimizees at once; every operation is elementwise, so each row evolves
exactly as a separate torch.optim run on that function would.
"""

from __future__ import annotations

import math

import torch

from l2l_cli.registry import OPTIMIZERS
from l2l_cli.schemas import BaselineConfig


class Baseline:
    """One hand-designed optimizer at one learning rate, with the learned optimizers' init_state / step."""

    def __init__(self, cfg: BaselineConfig, lr: float):
        self.cfg = cfg
        self.name = cfg.name
        self.lr = lr

    def init_state(self, theta: torch.Tensor) -> dict:
        return {}

    def step(self, grad: torch.Tensor, state: dict, t: int):
        cfg, lr = self.cfg, self.lr
        if cfg.name in ("sgd", "nag"):
            direction = grad
            if cfg.momentum > 0:
                buf = state.get("buf")
                buf = grad.clone() if buf is None else buf * cfg.momentum + grad
                state["buf"] = buf
                direction = grad + cfg.momentum * buf if cfg.nesterov else buf
            return -lr * direction, state
        if cfg.name == "rmsprop":
            sq = state.get("sq", torch.zeros_like(grad))
            sq = sq * cfg.alpha + (1 - cfg.alpha) * grad * grad
            state["sq"] = sq
            return -lr * grad / (sq.sqrt() + cfg.eps), state
        if cfg.name == "adam":
            count = state.get("count", 0) + 1
            m = state.get("m", torch.zeros_like(grad))
            v = state.get("v", torch.zeros_like(grad))
            m = m + (grad - m) * (1 - cfg.beta1)
            v = v * cfg.beta2 + (1 - cfg.beta2) * grad * grad
            state.update(count=count, m=m, v=v)
            step_size = lr / (1 - cfg.beta1 ** count)
            denom = v.sqrt() / math.sqrt(1 - cfg.beta2 ** count) + cfg.eps
            return -step_size * m / denom, state
        raise ValueError(f"optimizer.name: got {cfg.name!r}, allowed values: {', '.join(OPTIMIZERS.baselines())}")


def baseline_config(name: str) -> BaselineConfig:
    """A baseline's config with its registered defaults (learning rate: tuned)."""
    return OPTIMIZERS.get(name).default_config()


# in the order tables show them; the keyword arguments are each one's defaults where they differ from the schema's
OPTIMIZERS.register("sgd", BaselineConfig, Baseline)
OPTIMIZERS.register("nag", BaselineConfig, Baseline, momentum=0.9, nesterov=True)  # Nesterov momentum 0.9
OPTIMIZERS.register("rmsprop", BaselineConfig, Baseline)
OPTIMIZERS.register("adam", BaselineConfig, Baseline)
