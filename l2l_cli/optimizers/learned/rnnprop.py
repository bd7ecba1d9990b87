"""RNNprop (Lv, Jiang and Li 2017, "Learning gradient descent: better generalization and longer horizons"): the
LSTM sees Adam's normalised moments instead of the raw gradient, m_hat / sqrt(v_hat) and g / sqrt(v_hat), which do
not change when the optimizee's parameters are rescaled; a fully connected ELU layer in front of a small
coordinatewise LSTM, and an update of output_scale * tanh(linear(h)). Meta-train it with ``train.random_scale``
(its paper uses 3) so it never learns the scale of the training functions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Tuple

import torch
from torch import nn

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import LearnedOptimizerConfig, check, check_at_least_one
from l2l_cli.optimizers.learned.base import LearnedRule
from l2l_cli.optimizers.learned.lstm import cell_forward


@dataclass
class RNNpropConfig(LearnedOptimizerConfig):
    name: str = "rnnprop"
    hidden_size: int = 20
    layers: int = 2
    beta1: float = 0.95  # decay of the first moment m (Lv et al.: 0.95)
    beta2: float = 0.95  # decay of the second moment v (Lv et al.: 0.95)
    eps: float = 1e-8  # added to sqrt(v_hat)
    output_scale: float = 0.1  # the update is output_scale * tanh(.): at most this far per coordinate and step
    # its training recipe: train.random_scale: null means this (Lv et al. rescale by exp(U(-3, 3)))
    suggested_random_scale: ClassVar[float] = 3.0

    def __post_init__(self) -> None:
        check_at_least_one(self, "optimizer.", ("hidden_size", "layers"))
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            check(0 <= value < 1, f"optimizer.{key}", f"must be in [0, 1), got {value}")
        check(self.eps > 0, "optimizer.eps", f"must be > 0, got {self.eps}")
        check(math.isfinite(self.output_scale) and self.output_scale > 0, "optimizer.output_scale",
              f"must be a positive number, got {self.output_scale}")

    def architecture(self) -> dict:
        return {"name": self.name, "hidden_size": self.hidden_size, "layers": self.layers, "beta1": self.beta1,
                "beta2": self.beta2, "eps": self.eps}


def bias_corrections(t: int, beta1: float, beta2: float, like: torch.Tensor) -> torch.Tensor:
    """[1 / (1 - beta1^(t+1)), 1 / (1 - beta2^(t+1))] for step t (0 = first), as a tensor: a compiled step then
    takes every t without recompiling."""
    return like.new_tensor([1 / (1 - beta1 ** (t + 1)), 1 / (1 - beta2 ** (t + 1))])


def rnnprop_inputs(grad, m, v, corrections, beta1: float, beta2: float, eps: float):
    """One step of Adam's moments and RNNprop's inputs: (m, v) updated with grad, then
    (m_hat / (sqrt(v_hat) + eps), grad / (sqrt(v_hat) + eps)), hats by ``bias_corrections``."""
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    denom = (v * corrections[1]).sqrt() + eps
    return torch.stack((m * corrections[0] / denom, grad / denom)), m, v


class RNNprop(LearnedRule):
    """State: Adam's m and v per coordinate (N,), and per LSTM layer (h, c) of shape (H, N)."""

    coordinatewise = True

    def __init__(self, cfg: RNNpropConfig):
        super().__init__(cfg)
        H = cfg.hidden_size
        self.hidden_size = H
        self.input = nn.Linear(2, H)
        bound = 1.0 / math.sqrt(H)
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(2 * H, 4 * H).uniform_(-bound, bound))
                                        for _ in range(cfg.layers))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(4 * H).uniform_(-bound, bound))
                                       for _ in range(cfg.layers))
        self.head = nn.Linear(H, 1)

    def init_state(self, theta: torch.Tensor):
        n = theta.numel()
        zeros = lambda *shape: torch.zeros(*shape, device=theta.device, dtype=theta.dtype)  # noqa: E731
        return [zeros(n), zeros(n), [(zeros(self.hidden_size, n), zeros(self.hidden_size, n))
                                     for _ in self.weights]]

    def step(self, grad: torch.Tensor, state, t: int = 0) -> Tuple[torch.Tensor, list]:
        corrections = bias_corrections(t, self.config.beta1, self.config.beta2, grad)
        update, state = self(grad.reshape(-1), state, corrections)
        return update.view_as(grad), state

    def forward(self, grad: torch.Tensor, state, corrections: torch.Tensor):
        cfg = self.config
        m, v, layers = state
        features, m, v = rnnprop_inputs(grad, m, v, corrections, cfg.beta1, cfg.beta2, cfg.eps)
        x = nn.functional.elu(torch.addmm(self.input.bias.unsqueeze(1), self.input.weight, features))
        new_layers = []
        for weight, bias, (h, c) in zip(self.weights, self.biases, layers, strict=True):
            _, _, _, _, h, c = cell_forward(weight, bias, x, h, c, self.hidden_size)
            new_layers.append((h, c))
            x = h
        out = torch.addmm(self.head.bias.unsqueeze(1), self.head.weight, x).squeeze(0)
        return torch.tanh(out) * cfg.output_scale, [m, v, new_layers]


OPTIMIZERS.register("rnnprop", RNNpropConfig, RNNprop, learned=True)
