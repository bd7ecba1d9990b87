"""An exponential moving average of the learned optimizer's weights: what validation, best.pt and evaluation see,
while the raw weights keep training (train.ema_decay; 0: off)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from l2l_cli.meta.weights import copy_into


class WeightAverage:
    def __init__(self, net: nn.Module, decay: float):
        self.net, self.decay = net, decay
        self.weights = [p.detach().clone() for p in net.parameters()] if decay > 0 else None

    @property
    def on(self) -> bool:
        return self.weights is not None

    @torch.no_grad()
    def update(self, iteration: int) -> None:
        """After iteration ``iteration``'s meta-updates (counted from 0)."""
        if self.weights is None:
            return
        # warm-up (as TensorFlow's ExponentialMovingAverage with num_updates): early on, the average must not hold on
        # to the untrained initial weights
        decay = min(self.decay, (1 + iteration) / (10 + iteration))
        for avg, p in zip(self.weights, self.net.parameters(), strict=True):
            avg.lerp_(p.detach(), 1 - decay)

    def evaluated_state(self) -> dict:
        """The weights validation and evaluation use: the average when it is on, else the trained ones."""
        state = self.net.state_dict()
        if self.weights is not None:
            names = [name for name, _ in self.net.named_parameters()]
            state.update({name: avg.clone() for name, avg in zip(names, self.weights, strict=True)})
        return state

    def load(self, averaged: dict) -> None:
        """The average from a checkpoint's evaluated weights (its ``model``)."""
        if self.weights is not None:
            self.weights = [averaged[name].clone() for name, _ in self.net.named_parameters()]

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the network's parameters (in place, so compiled steps see it) for the block."""
        if self.weights is None:
            yield
            return
        trained = [p.detach().clone() for p in self.net.parameters()]
        copy_into(list(self.net.parameters()), self.weights)
        try:
            yield
        finally:
            copy_into(list(self.net.parameters()), trained)
