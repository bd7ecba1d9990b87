"""NTM-BFGS (the paper's appendix): an LSTM+GAC controller, replicated over the coordinates, with read and write
heads on an external memory shared by all coordinates of one optimizee. BFGS's structure without its formulas: the
memory M (P x P for P coordinates) plays the inverse-Hessian estimate, each write adds outer products a b^T of
learned vectors (a low-rank update, as BFGS's), each read is a product M r with a learned vector r, and the read
result is the step, as -M grad is BFGS's.

M is never formed: it is kept as its last ``memory_size`` writes per write head, A and B of shape
(functions, slots, P), so that M r = A (B r) / P costs O(P x slots) (the paper's NTM-L-BFGS sliding history). What
the appendix leaves open and what is chosen here (docs/experiments/generalization.md, "Learned optimizers"):
M_0 = 0; at each step write, then read; the read's inner product is a mean over the P coordinates (b . r / P) so
that its size does not grow with P; the update is output_scale x the sum of the read heads' results; the controller
sees the preprocessed gradient and the preprocessed read results of the previous step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import LearnedOptimizerConfig, check, check_at_least_one, check_choice
from l2l_cli.optimizers.learned.base import LearnedRule
from l2l_cli.optimizers.learned.lstm import cell_forward
from l2l_cli.optimizers.learned.lstm_gac import average_cells
from l2l_cli.optimizers.learned.preprocessing import PREPROCESSING, num_features, preprocess


@dataclass
class NTMBFGSConfig(LearnedOptimizerConfig):
    name: str = "ntm_bfgs"
    hidden_size: int = 20
    layers: int = 2
    gac_fraction: float = 0.25  # the controller's global averaging cells, as optimizer=lstm_gac
    read_heads: int = 1
    write_heads: int = 2
    memory_size: int = 20  # writes kept per write head (oldest dropped): the memory's rank is at most this x heads
    preprocess: str = "paper"
    preprocess_p: float = 10.0
    output_scale: float = 0.1

    def __post_init__(self) -> None:
        check_at_least_one(self, "optimizer.", ("hidden_size", "layers", "read_heads", "write_heads", "memory_size"))
        check(math.isfinite(self.gac_fraction) and 0 <= self.gac_fraction <= 1, "optimizer.gac_fraction",
              f"must be in [0, 1], got {self.gac_fraction}")
        check_choice(self.preprocess, "optimizer.preprocess", PREPROCESSING)
        check(self.preprocess_p > 0, "optimizer.preprocess_p", f"must be > 0, got {self.preprocess_p}")
        check(math.isfinite(self.output_scale) and self.output_scale > 0, "optimizer.output_scale",
              f"must be a positive number, got {self.output_scale}")

    def architecture(self) -> dict:
        return {k: v for k, v in super().architecture().items() if k != "output_scale"}


def write_memory(left: torch.Tensor, right: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """Slide the factored memory by one write: left, right (n, S, P) keep their newest S - W slots and take a, b
    (n, W, P) as the newest W."""
    heads = a.shape[1]
    return torch.cat((left[:, heads:], a), dim=1), torch.cat((right[:, heads:], b), dim=1)


def read_memory(left: torch.Tensor, right: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """M r for each read vector, M = sum_s left_s right_s^T / P per optimizee, without forming M: r (n, R, P) ->
    (n, R, P)."""
    coefficients = torch.einsum("nsp,nrp->nrs", right, r) / r.shape[-1]
    return torch.einsum("nrs,nsp->nrp", coefficients, left)


def dense_memory(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The (n, P, P) matrices the factored memory stands for (tests; O(P^2))."""
    return torch.einsum("nsp,nsq->npq", left, right) / left.shape[-1]


class NTMBFGS(LearnedRule):
    """State: per controller layer (h, c) of shape (H, n * P), the memory's left and right slots (n, S, P), and the
    last read results (n, R, P)."""

    def __init__(self, cfg: NTMBFGSConfig):
        super().__init__(cfg)
        H = cfg.hidden_size
        self.hidden_size = H
        self.gac_cells = round(cfg.gac_fraction * H)
        bound = 1.0 / math.sqrt(H)
        in_size = num_features(cfg.preprocess) * (1 + cfg.read_heads)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for _ in range(cfg.layers):
            self.weights.append(nn.Parameter(torch.empty(in_size + H, 4 * H).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(4 * H).uniform_(-bound, bound)))
            in_size = H
        # per coordinate: its entries of the read vectors and of the left and right write vectors
        self.heads = nn.Linear(H, cfg.read_heads + 2 * cfg.write_heads)

    def init_state(self, theta: torch.Tensor):
        cfg = self.config
        n, P = theta.shape
        zeros = lambda *shape: torch.zeros(*shape, device=theta.device, dtype=theta.dtype)  # noqa: E731
        slots = cfg.memory_size * cfg.write_heads
        return [[(zeros(self.hidden_size, n * P), zeros(self.hidden_size, n * P)) for _ in self.weights],
                zeros(n, slots, P), zeros(n, slots, P), zeros(n, cfg.read_heads, P)]

    def step(self, grad: torch.Tensor, state, t: int = 0):
        return self(grad, state)

    def forward(self, grad: torch.Tensor, state):
        cfg = self.config
        n, P = grad.shape
        layers, left, right, reads = state
        kind, p = cfg.preprocess, cfg.preprocess_p
        x = torch.cat([preprocess(grad.reshape(-1), kind, p).t()]
                      + [preprocess(reads[:, k].reshape(-1), kind, p).t() for k in range(cfg.read_heads)])
        new_layers = []
        for weight, bias, (h, c) in zip(self.weights, self.biases, layers, strict=True):
            _, _, _, _, h, c = cell_forward(weight, bias, x, h, c, self.hidden_size)
            h = average_cells(h, self.gac_cells, n)
            new_layers.append((h, c))
            x = h
        out = torch.addmm(self.heads.bias.unsqueeze(1), self.heads.weight, x).view(-1, n, P).transpose(0, 1)
        R, W = cfg.read_heads, cfg.write_heads
        left, right = write_memory(left, right, out[:, R:R + W], out[:, R + W:])
        reads = read_memory(left, right, out[:, :R])
        return reads.sum(dim=1) * cfg.output_scale, [new_layers, left, right, reads]


OPTIMIZERS.register("ntm_bfgs", NTMBFGSConfig, NTMBFGS, learned=True)
