"""The coordinatewise LSTM optimizer: one small LSTM shared by every coordinate, a state per coordinate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import nn

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import LearnedOptimizerConfig, check, check_at_least_one, check_choice
from l2l_cli.optimizers.learned.base import LearnedRule
from l2l_cli.optimizers.learned.preprocessing import PREPROCESSING, num_features, preprocess

State = List[Tuple[torch.Tensor, torch.Tensor]]

# coordinates per pass of CoordinatewiseLSTM.forward: small enough for a chunk's gate matrix to stay in cache between
# its matmul and its activations, large enough that the OpenMP regions per chunk stay few (docs/performance.md)
CHUNK = 16384


@dataclass
class LSTMConfig(LearnedOptimizerConfig):
    """The coordinatewise LSTM optimizer of the paper."""

    name: str = "lstm"
    hidden_size: int = 20
    layers: int = 2
    # none | paper (Appendix A, p = preprocess_p) | deepmind (the original code's LogAndSign, k = preprocess_p)
    preprocess: str = "paper"
    preprocess_p: float = 10.0
    output_scale: float = 0.1

    def __post_init__(self) -> None:
        check_at_least_one(self, "optimizer.", ("hidden_size", "layers"))
        check_choice(self.preprocess, "optimizer.preprocess", PREPROCESSING)
        check(self.preprocess_p > 0, "optimizer.preprocess_p", f"must be > 0, got {self.preprocess_p}")
        check(math.isfinite(self.output_scale) and self.output_scale > 0, "optimizer.output_scale",
              f"must be a positive number, got {self.output_scale}")

    def architecture(self) -> dict:
        """The fields a checkpoint must agree on to be loadable (the output scale is not one of them)."""
        return {"name": self.name, "hidden_size": self.hidden_size, "layers": self.layers,
                "preprocess": self.preprocess, "preprocess_p": self.preprocess_p}


class CoordinatewiseLSTM(LearnedRule):
    """Stacked LSTM over N independent coordinates at once, followed by a linear map to one update each.

    Each layer does its input and recurrent products in one matmul on [x; h], so all coordinates of all
    optimizees go through one batched call per layer per step. Activations and state are laid out coordinates
    last, (features, N): every gate is a contiguous block, so the elementwise work (most of the step's time) runs
    in full vector lanes along N. The weights keep the (in + H, 4H) layout of checkpoints.
    """

    def __init__(self, cfg: LSTMConfig):
        super().__init__(cfg)
        hidden_size = cfg.hidden_size
        self.hidden_size = hidden_size
        self.preprocess_kind = cfg.preprocess
        self.preprocess_p = cfg.preprocess_p
        self.output_scale = cfg.output_scale
        bound = 1.0 / math.sqrt(hidden_size)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        in_size = num_features(cfg.preprocess)
        for _ in range(cfg.layers):
            weight = torch.empty(in_size + hidden_size, 4 * hidden_size).uniform_(-bound, bound)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(torch.empty(4 * hidden_size).uniform_(-bound, bound)))
            in_size = hidden_size
        self.head = nn.Linear(hidden_size, 1)

    def initial_state(self, n: int, device=None, dtype=torch.float32) -> State:
        """Per layer (h, c), each of shape (hidden_size, n)."""
        zeros = lambda: torch.zeros(self.hidden_size, n, device=device, dtype=dtype)  # noqa: E731
        return [(zeros(), zeros()) for _ in self.weights]

    coordinatewise = True  # the state is (hidden_size, coordinates) per layer

    def init_state(self, theta: torch.Tensor) -> State:
        return self.initial_state(theta.numel(), theta.device, theta.dtype)

    def step(self, grad: torch.Tensor, state: State, t: int = 0) -> Tuple[torch.Tensor, State]:
        """Every coordinate of every optimizee is one column: nothing is shared between coordinates."""
        update, state = self(grad.reshape(-1), state)
        return update.view_as(grad), state


    def forward(self, grad: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """grad (N,) -> update (N,) = output_scale * linear(LSTM(preprocess(grad))).

        Many coordinates go through in chunks of CHUNK: each chunk's (4H, CHUNK) gate matrix is still in the cache
        when its activations read it, where the whole (4H, N) one goes out to memory and back.
        """
        n = grad.shape[0]
        if n <= CHUNK or grad.device.type != "cpu":  # on a GPU chunks would only multiply the kernel launches
            return self._forward(grad, state)
        pieces = [self._forward(grad[s: s + CHUNK], [(h[:, s: s + CHUNK], c[:, s: s + CHUNK]) for h, c in state])
                  for s in range(0, n, CHUNK)]
        update = torch.cat([u for u, _ in pieces])
        return update, [tuple(torch.cat([st[layer][k] for _, st in pieces], 1) for k in (0, 1))
                        for layer in range(len(state))]

    def step_copies(self, weights: dict, grad: torch.Tensor, state: State, t: int = 0) -> Tuple[torch.Tensor, State]:
        """M copies of this optimizer at once, each with its own weights: ``weights`` {parameter name: (M, *shape)},
        grad (M, P), state per layer (h, c) of shape (M, H, P) -> (update (M, P), state). What ``step`` of copy i
        with weights[i] gives, in one batched matmul per layer instead of a vmapped module call."""
        layers = len(self.weights)
        update, _, new_state = lstm_step([weights[f"weights.{i}"] for i in range(layers)],
                                         [weights[f"biases.{i}"] for i in range(layers)], weights["head.weight"],
                                         weights["head.bias"], grad, state, self.preprocess_kind, self.preprocess_p,
                                         self.output_scale, self.hidden_size)
        return update, new_state

    def _forward(self, grad: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        update, _, new_state = lstm_step(list(self.weights), list(self.biases), self.head.weight, self.head.bias, grad,
                                         state, self.preprocess_kind, self.preprocess_p, self.output_scale,
                                         self.hidden_size)
        return update, new_state


def lstm_step(weights: List[torch.Tensor], biases: List[torch.Tensor], head_w, head_b, grad, state: State, kind: str,
              p: float, scale: float, hidden: int):
    """grad (N,) -> (update (N,), per layer what a hand-written backward reads: ([x; h], ifo, g, c_prev, tanh c),
    the new state). The module's forward and meta/estimators/lstm_bptt.py both step with this.

    With a leading copy dimension M on everything (weights (M, in + H, 4H), biases (M, 4H), head (M, 1, H) and
    (M, 1), grad (M, N), state (M, H, N)) it steps M copies, each with its own weights, one batched matmul per layer
    (``step_copies``: the perturbed copies of es and pes)."""
    x = preprocess(grad, kind, p).transpose(-1, -2)
    saved, new_state = [], []
    for weight, bias, (h, c) in zip(weights, biases, state, strict=True):
        inp, ifo, g, tanh_c, h, c_new = cell_forward(weight, bias, x, h, c, hidden)
        saved.append((inp, ifo, g, c, tanh_c))
        new_state.append((h, c_new))
        x = h
    update = _affine(head_b.unsqueeze(-1), head_w, x).squeeze(-2) * scale
    return update, saved, new_state


def _affine(bias, weight, x):
    """bias + weight @ x in one kernel: addmm, or baddbmm with a leading copy dimension."""
    return torch.addmm(bias, weight, x) if weight.dim() == 2 else torch.baddbmm(bias, weight, x)


def cell_forward(weight, bias, x, h, c, hidden: int):
    """One layer, one step, coordinates last: x (in, N), h and c (H, N) -> ([x; h], ifo, g, tanh c', h', c'); with
    a leading copy dimension on every argument, each copy with its own weights.

    ifo = sigmoid of the input, forget and output gates (3H, N), g = tanh of the cell input (H, N): the activations
    a hand-written backward needs. They stay two tensors: one concatenated tensor would be written out and read
    back even where nothing keeps it (docs/performance.md).
    """
    H = hidden
    inp = torch.cat((x, h), dim=-2)
    bias = bias.unsqueeze(-1)
    # (4H, N): input and recurrent products in one matmul
    if torch.compiler.is_compiling():
        # the bias goes into the fused activation kernel: addmm (which the compiler makes of matmul + bias) first
        # copies the broadcast bias into its whole output
        gates = weight.transpose(-1, -2) @ inp
        pre_ifo, pre_g = gates[..., :3 * H, :] + bias[..., :3 * H, :], gates[..., 3 * H:, :] + bias[..., 3 * H:, :]
    else:  # eager: one addmm (one kernel) beats a matmul and two separate adds
        gates = _affine(bias, weight.transpose(-1, -2), inp)
        pre_ifo, pre_g = gates[..., :3 * H, :], gates[..., 3 * H:, :]
    ifo = torch.sigmoid(pre_ifo)
    g = torch.tanh(pre_g)
    c = ifo[..., H:2 * H, :] * c + ifo[..., :H, :] * g
    tanh_c = torch.tanh(c)
    return inp, ifo, g, tanh_c, ifo[..., 2 * H:, :] * tanh_c, c


OPTIMIZERS.register("lstm", LSTMConfig, CoordinatewiseLSTM, learned=True)
