"""LSTM+GAC (the paper's appendix): the coordinatewise LSTM with Global Averaging Cells. In every layer the first
``round(gac_fraction * hidden_size)`` cells have their outgoing activation h replaced, at every step, by its average
over all coordinates of the same optimizee, so coordinates share information while the network stays
order-invariant. Averages never cross optimizees: a batch of n optimizees is n independent averages."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import check
from l2l_cli.optimizers.learned.lstm import CoordinatewiseLSTM, LSTMConfig, cell_forward
from l2l_cli.optimizers.learned.preprocessing import preprocess


@dataclass
class LSTMGACConfig(LSTMConfig):
    name: str = "lstm_gac"
    gac_fraction: float = 0.25  # of each layer's cells: global averaging cells

    def __post_init__(self) -> None:
        super().__post_init__()
        check(math.isfinite(self.gac_fraction) and 0 <= self.gac_fraction <= 1, "optimizer.gac_fraction",
              f"must be in [0, 1], got {self.gac_fraction}")

    def architecture(self) -> dict:
        return {**super().architecture(), "gac_fraction": self.gac_fraction}

    @property
    def gac_cells(self) -> int:
        return round(self.gac_fraction * self.hidden_size)


def average_cells(h: torch.Tensor, cells: int, functions: int) -> torch.Tensor:
    """h (H, functions * P), coordinates of one optimizee contiguous: the first ``cells`` rows replaced by their mean
    over each optimizee's P coordinates."""
    if cells == 0:
        return h
    H, N = h.shape
    shared = h[:cells].view(cells, functions, N // functions).mean(dim=2, keepdim=True)
    return torch.cat((shared.expand(cells, functions, N // functions).reshape(cells, N), h[cells:]))


class GlobalAveragingLSTM(CoordinatewiseLSTM):
    """The paper's LSTM weights and layout; the averages make a coordinate's update depend on its optimizee's other
    coordinates, so it runs unchunked, meta-trains through autograd, and is not ``coordinatewise``."""

    coordinatewise = False
    step_copies = None  # the plain LSTM's batched step would skip the averaging: es / pes copies go through vmap

    def __init__(self, cfg: LSTMGACConfig):
        super().__init__(cfg)
        self.gac_cells = cfg.gac_cells

    def step(self, grad: torch.Tensor, state, t: int = 0):
        return self(grad, state)

    def forward(self, grad: torch.Tensor, state):
        """grad (n, P) -> (update (n, P), per layer (h, c) of shape (H, n * P))."""
        n = grad.shape[0]
        x = preprocess(grad.reshape(-1), self.preprocess_kind, self.preprocess_p).t()
        new_state = []
        for weight, bias, (h, c) in zip(self.weights, self.biases, state, strict=True):
            _, _, _, _, h, c = cell_forward(weight, bias, x, h, c, self.hidden_size)
            h = average_cells(h, self.gac_cells, n)  # what the next layer and the next step see
            new_state.append((h, c))
            x = h
        update = torch.addmm(self.head.bias.unsqueeze(1), self.head.weight, x).squeeze(0) * self.output_scale
        return update.view_as(grad), new_state


OPTIMIZERS.register("lstm_gac", LSTMGACConfig, GlobalAveragingLSTM, learned=True)
