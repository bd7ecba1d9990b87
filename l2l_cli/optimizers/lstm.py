"""The coordinatewise LSTM optimizer: one small LSTM shared by every coordinate, a state per coordinate."""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import nn

from l2l_cli.optimizers.preprocessing import num_features, preprocess

State = List[Tuple[torch.Tensor, torch.Tensor]]


class CoordinatewiseLSTM(nn.Module):
    """Stacked LSTM over N independent coordinates at once, followed by a linear map to one update each.

    Each layer does its input and recurrent products in one matmul on [x, h] (N rows), so all coordinates of all
    optimizees go through one batched call per layer per step.
    """

    def __init__(self, hidden_size: int = 20, layers: int = 2, preprocess: str = "paper",
                 preprocess_p: float = 10.0, output_scale: float = 0.1):
        super().__init__()
        self.hidden_size = hidden_size
        self.preprocess_kind = preprocess
        self.preprocess_p = preprocess_p
        self.output_scale = output_scale
        bound = 1.0 / math.sqrt(hidden_size)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        in_size = num_features(preprocess)
        for _ in range(layers):
            weight = torch.empty(in_size + hidden_size, 4 * hidden_size).uniform_(-bound, bound)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(torch.empty(4 * hidden_size).uniform_(-bound, bound)))
            in_size = hidden_size
        self.head = nn.Linear(hidden_size, 1)

    def initial_state(self, n: int, device=None, dtype=torch.float32) -> State:
        zeros = lambda: torch.zeros(n, self.hidden_size, device=device, dtype=dtype)  # noqa: E731
        return [(zeros(), zeros()) for _ in self.weights]

    def forward(self, grad: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """grad (N,) -> update (N,) = output_scale * linear(LSTM(preprocess(grad)))."""
        x = preprocess(grad, self.preprocess_kind, self.preprocess_p)
        H = self.hidden_size
        new_state: State = []
        for weight, bias, (h, c) in zip(self.weights, self.biases, state, strict=True):
            gates = torch.addmm(bias, torch.cat((x, h), dim=1), weight)
            ifo = torch.sigmoid(gates[:, : 3 * H])
            cell = torch.tanh(gates[:, 3 * H:])
            c = ifo[:, H: 2 * H] * c + ifo[:, :H] * cell
            h = ifo[:, 2 * H:] * torch.tanh(c)
            new_state.append((h, c))
            x = h
        return self.head(x).squeeze(-1) * self.output_scale, new_state


def detach_state(state: State) -> State:
    return [(h.detach(), c.detach()) for h, c in state]


EVAL_CHUNK = 16384  # coordinates per LSTM call in evaluation: a layer's gates (chunk x 4H floats) stay in cache


class LearnedRule:
    """The step interface (see ``l2l_cli.optimizers``) around a CoordinatewiseLSTM.

    Without autograd (validation, evaluation) a large batch of coordinates goes through the LSTM in fixed-size
    chunks: on many coordinates the step is bound by memory traffic, and a chunk's gates never leave the cache.
    The state is double-buffered (each step writes the buffers the step before last returned), so chunked steps
    allocate nothing; callers must not keep a state once they have passed it back in.
    """

    name = "lstm"

    def __init__(self, net: CoordinatewiseLSTM, chunk: int = EVAL_CHUNK):
        self.net = net
        self.chunk = chunk
        self._spare: State | None = None

    def init_state(self, theta: torch.Tensor) -> State:
        self._spare = None
        return self.net.initial_state(theta.numel(), theta.device, theta.dtype)

    def step(self, grad: torch.Tensor, state: State, t: int):
        flat = grad.reshape(-1)
        if torch.is_grad_enabled() or flat.numel() <= self.chunk:
            update, state = self.net(flat, state)
            return update.view_as(grad), state
        return self._chunked_step(flat, state).view_as(grad), self._swap(state)

    def _chunked_step(self, flat: torch.Tensor, state: State) -> torch.Tensor:
        if self._spare is None or self._spare[0][0].shape != state[0][0].shape:
            self._spare = [(torch.empty_like(h), torch.empty_like(c)) for h, c in state]
        n, size = flat.numel(), self.chunk
        update = torch.empty_like(flat)
        # the last chunk overlaps the one before, so every call has one shape (one compiled graph); the overlap
        # reads the old state and writes the same values twice
        for start in [*range(0, n - size, size), n - size]:
            part = slice(start, start + size)
            out, new = self.net(flat[part], [(h[part], c[part]) for h, c in state])
            update[part] = out
            for (h, c), (new_h, new_c) in zip(self._spare, new, strict=True):
                h[part] = new_h
                c[part] = new_c
        return update

    def _swap(self, state: State) -> State:
        written, self._spare = self._spare, state
        return written
