"""A per-parameter MLP on top of Adam, built on what later learned optimizers found generalises (Harrison et al. 2022,
"A closer look at learned optimization": a nominal descent term plus a learned one; Metz et al.'s small_fc_lopt and
VeLO: features normalised per tensor, momenta at several timescales, the fraction of training done; Celo: a
bounded, normalised learned direction times a learned step size).

Per coordinate, with Adam's second moment v (decay beta2) and momenta m_k (decays ``momentum_decays``), all
bias-corrected, and a = m_k / (sqrt(v) + eps) for the ``nominal`` decay:

    update = -exp(log_lr + lr_range * tanh(s)) * (a + correction * tanh(d) * rms_tensor(a))

where (d, s) = MLP(features, time): features are g / (sqrt(v) + eps), every m_k / (sqrt(v) + eps) and
sqrt(v) / rms_tensor(sqrt(v)), each divided by its root mean square over its tensor (the optimizee's named tensors,
``bind``); time is the fraction of the run done (t / horizon) and the first steps, as tanh embeddings added to the
first layer. So:
- with a zero gradient from the start the update is exactly zero (a = 0 and rms_tensor(a) = 0), and it decays with
  the momenta once the gradient vanishes;
- multiplying the loss by c > 0 changes nothing but eps's share (every feature and a are ratios of gradients);
- |update| <= exp(log_lr + lr_range) * (|a| + correction * rms_tensor(a)), with log_lr clamped to
  [log(min_lr), log(max_lr)], and |a| <= 1 / sqrt((1 - beta2) (1 - beta^2 / beta2)) (Cauchy-Schwarz on the
  moments; about 73 for the nominal 0.9 and 0.999).
The MLP starts at (almost) zero output: the untrained optimizer is Adam with lr ``init_lr``.

Coordinatewise as the drop-in needs: a coordinate's update depends on its own history and its tensor's statistics
only, so the state is cut per parameter tensor (``LearnedOptimizer`` binds each slab's tensors before stepping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import nn

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import LearnedOptimizerConfig, check, check_at_least_one
from l2l_cli.optimizers.learned.base import LearnedRule

TINY = 1e-30  # an all-zero tensor's features stay 0 (0 / (0 + TINY)), with finite derivatives


@dataclass
class AdamMLPConfig(LearnedOptimizerConfig):
    name: str = "adam_mlp"
    hidden_size: int = 16
    hidden_layers: int = 1
    momentum_decays: List[float] = field(default_factory=lambda: [0.5, 0.9, 0.99])
    nominal: int = 1  # which of momentum_decays gives the nominal Adam direction a
    beta2: float = 0.999
    eps: float = 1e-8
    init_lr: float = 1e-2  # the learned step size exp(log_lr) starts here
    min_lr: float = 1e-6
    max_lr: float = 1.0
    lr_range: float = 2.0  # per coordinate the MLP scales the step by exp(+-lr_range) at most
    correction: float = 1.0  # the learned direction's size, in units of the tensor's rms of a
    # > 0: a per-tensor step-size state h in [-adapt_range, adapt_range] (log units) that grows while a tensor's
    # gradient agrees with its momentum and shrinks while they disagree (hypergradient descent, Baydin et al. 2018):
    # h += rate * cos(g, m_prev) per step, with the rate learned (starting at adapt_rate); h is also an MLP input.
    # 0 (this class's default, what checkpoints written before it existed hold): off, one step size for every problem
    # (docs/experiments/general.md#diagnostics-one-step-size-for-every-member); optimizer=adam_mlp sets 3
    adapt_range: float = 0.0
    adapt_rate: float = 0.05
    # runs longer than default_horizon (the longest meta-training run) move h at rate * default_horizon / horizon,
    # so h follows the fraction of the run done as it did in meta-training instead of drifting for 5-10x as many
    # steps (docs/experiments/general.md#beyond-the-training-horizon); false: the same rate at every horizon
    adapt_stretch: bool = True
    # runs whose length is not known (a drop-in without total_steps) take the fraction done as t / this, capped at 1
    default_horizon: int = 200

    def __post_init__(self) -> None:
        check_at_least_one(self, "optimizer.", ("hidden_size", "default_horizon"))
        check(self.hidden_layers >= 0, "optimizer.hidden_layers", f"must be >= 0, got {self.hidden_layers}")
        decays = list(self.momentum_decays)
        check(len(decays) > 0 and all(0 <= b < 1 for b in decays), "optimizer.momentum_decays",
              f"must be a non-empty list of numbers in [0, 1), got {decays}")
        check(0 <= self.nominal < len(decays), "optimizer.nominal",
              f"must index optimizer.momentum_decays (0..{len(decays) - 1}), got {self.nominal}")
        check(0 < self.beta2 < 1, "optimizer.beta2", f"must be in (0, 1), got {self.beta2}")
        check(self.eps > 0, "optimizer.eps", f"must be > 0, got {self.eps}")
        check(math.isfinite(self.adapt_rate), "optimizer.adapt_rate", f"must be a number, got {self.adapt_rate}")
        check(isinstance(self.adapt_stretch, bool), "optimizer.adapt_stretch",
              f"must be true or false, got {self.adapt_stretch!r}")
        check(0 < self.min_lr <= self.init_lr <= self.max_lr and math.isfinite(self.max_lr), "optimizer.init_lr",
              f"must satisfy 0 < min_lr <= init_lr <= max_lr < inf, got {self.min_lr}, {self.init_lr}, "
              f"{self.max_lr}")
        for key in ("lr_range", "correction", "adapt_range"):
            value = getattr(self, key)
            check(math.isfinite(value) and value >= 0, f"optimizer.{key}", f"must be a number >= 0, got {value}")

    def architecture(self) -> dict:
        return {"name": self.name, "hidden_size": self.hidden_size, "hidden_layers": self.hidden_layers,
                "momentum_decays": [float(b) for b in self.momentum_decays], "nominal": self.nominal,
                "beta2": self.beta2, "eps": self.eps, "min_lr": self.min_lr, "max_lr": self.max_lr,
                "lr_range": self.lr_range, "correction": self.correction,
                "adapt_range": self.adapt_range}


TIME_FEATURES = 5


def time_features(t: int, horizon: int, like: torch.Tensor) -> torch.Tensor:
    """The fraction of the run done and the first steps, as a few bounded numbers: [f, tanh(3 (f - c)) for c in
    (0.25, 0.5, 0.75), tanh(t / 10)] with f = min(t / horizon, 1); a tensor, so a compiled step never recompiles."""
    f = min(t / max(horizon, 1), 1.0)
    return like.new_tensor([f, math.tanh(3 * (f - 0.25)), math.tanh(3 * (f - 0.5)), math.tanh(3 * (f - 0.75)),
                            math.tanh(t / 10)])


def _blocks(x: torch.Tensor, sizes: Tuple[int, ...]) -> torch.Tensor:
    """x (..., columns) as (..., copies, total): the layout of ``sizes`` once per copy (functions side by side)."""
    total = sum(sizes)
    if x.shape[-1] % total:
        raise RuntimeError(f"adam_mlp was bound to an optimizee with {total} parameters, got {x.shape[-1]} columns")
    return x.reshape(*x.shape[:-1], x.shape[-1] // total, total)


def tensor_mean(x: torch.Tensor, sizes: Optional[Tuple[int, ...]]) -> torch.Tensor:
    """Mean of each tensor along the last dimension of x (..., columns): (..., 1) when the columns are one tensor
    (``sizes`` None or the whole row), else (..., copies, tensors) for the tensors of ``sizes`` in order, once or
    several times over (functions side by side, each its own statistics). ``per_tensor`` applies it."""
    if sizes is None or len(sizes) == 1 and sizes[0] == x.shape[-1]:
        return x.mean(dim=-1, keepdim=True)
    return torch.cat([piece.mean(dim=-1, keepdim=True) for piece in _blocks(x, sizes).split(sizes, dim=-1)], dim=-1)


def tensor_rms(x: torch.Tensor, sizes: Optional[Tuple[int, ...]]) -> torch.Tensor:
    """Root mean square of each tensor (``tensor_mean``'s shape)."""
    return _root(tensor_mean(x.square(), sizes))


def per_tensor(x: torch.Tensor, factors: torch.Tensor, sizes: Optional[Tuple[int, ...]]) -> torch.Tensor:
    """x (..., columns) times one factor per tensor (``tensor_rms``'s shape), in one pass."""
    if factors.shape[-1] == 1 and (sizes is None or len(sizes) == 1 and sizes[0] == x.shape[-1]):
        return x * factors
    pieces = _blocks(x, sizes).split(sizes, dim=-1)
    return torch.cat([p * f for p, f in zip(pieces, factors.split(1, dim=-1), strict=True)], dim=-1).reshape(x.shape)


def _root(mean_square: torch.Tensor) -> torch.Tensor:
    """sqrt, exactly 0 at 0 with a finite derivative everywhere (sqrt's is infinite at 0)."""
    return torch.where(mean_square > 0, mean_square.clamp_min(TINY).sqrt(), torch.zeros_like(mean_square))


class AdamMLP(LearnedRule):
    """State: Adam's second moment v, one momentum per decay and (with ``adapt_range``) the step-size state h, each
    (functions, parameters)."""

    coordinatewise = True

    def __init__(self, cfg: AdamMLPConfig):
        super().__init__(cfg)
        features = len(cfg.momentum_decays) + 2 + (cfg.adapt_range > 0)
        H = cfg.hidden_size
        widths = [features] + [H] * cfg.hidden_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=False))
        self.time = nn.Linear(TIME_FEATURES, widths[1], bias=False) if cfg.hidden_layers else None
        self.head = nn.Linear(widths[-1], 2)
        with torch.no_grad():  # starts as Adam: (d, s) near zero
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()
        self.log_lr = nn.Parameter(torch.tensor(math.log(cfg.init_lr)))
        if cfg.adapt_range > 0:
            self.adapt_rate = nn.Parameter(torch.tensor(float(cfg.adapt_rate)))
        self._sizes: Optional[Tuple[int, ...]] = None
        self.horizon: Optional[int] = None

    def bind(self, layout, horizon: Optional[int] = None) -> None:
        self._sizes = tuple(int(s) for _, s in layout)
        self.horizon = horizon

    def init_state(self, theta: torch.Tensor):
        zeros = torch.zeros(theta.shape[0], theta[0].numel(), device=theta.device, dtype=theta.dtype)
        leaves = 1 + len(self.config.momentum_decays) + (self.config.adapt_range > 0)
        return [zeros] + [zeros.clone() for _ in range(leaves - 1)]

    # es / pes copies: as many coordinates per call as the features and hidden units of this step keep in memory
    coordinates_per_call = 2 ** 18

    def step(self, grad: torch.Tensor, state, t: int = 0):
        rows = grad.reshape(grad.shape[0], -1)
        update, state = self(rows, state, *self._step_inputs(t, rows))
        return update.view_as(grad), state

    def step_copies(self, weights: dict, grad: torch.Tensor, state, t: int = 0):
        """M copies at once, each with its own weights ({parameter name: (M, *shape)}): grad (M, P) and state
        leaves (M, ..., P) -> (update (M, P), state); one batched matmul per layer for every copy."""
        rows = grad.reshape(grad.shape[0], -1)
        shapes = [leaf.shape for leaf in state]
        update, new = adam_mlp_step(self.config, weights, rows, [leaf.reshape(rows.shape) for leaf in state],
                                    *self._step_inputs(t, rows))
        return update.view_as(grad), [leaf.reshape(shape) for leaf, shape in zip(new, shapes, strict=True)]

    def _step_inputs(self, t: int, like: torch.Tensor):
        """(bias corrections, time features, tensor sizes) of step t: tensors, so a compiled step takes every t."""
        cfg = self.config
        corrections = like.new_tensor([1 / (1 - b ** (t + 1)) for b in cfg.momentum_decays]
                                      + [1 / (1 - cfg.beta2 ** (t + 1))])
        horizon = self.horizon or cfg.default_horizon
        stretch = min(1.0, cfg.default_horizon / horizon) if cfg.adapt_stretch else 1.0
        return corrections, time_features(t, horizon, like), self._sizes, like.new_tensor(stretch)

    def forward(self, grad, state, corrections, time, sizes, stretch):
        return adam_mlp_step(self.config, dict(self.named_parameters()), grad, state, corrections, time, sizes,
                             stretch)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (rows, in, columns) -> (rows, out, columns), coordinates along the last dimension (the long dimension of
    the matmul, where BLAS is fast for so few inputs); weight (out, in) and bias (out,) shared by every row, or
    with a leading copy dimension, one set per row."""
    if weight.dim() == 3:
        return torch.baddbmm(bias.unsqueeze(-1), weight, x)
    if x.shape[0] == 1:
        return torch.addmm(bias.unsqueeze(-1), weight, x[0]).unsqueeze(0)
    return torch.matmul(weight, x) + bias.unsqueeze(-1)


# coordinates whose hidden units go through the MLP at once: its activations stay in cache (memory traffic, not
# arithmetic, bounds a layer this narrow)
MLP_COORDINATES = 16384


def _mlp(cfg: AdamMLPConfig, weights: dict, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """The per-coordinate MLP: features (rows, F, columns) -> (d, s) as (rows, 2, columns), in column chunks."""
    biases = [weights[f"layers.{k}.bias"] for k in range(cfg.hidden_layers)]
    if biases:  # the time features enter as a bias of the first layer: the same for every coordinate
        biases[0] = biases[0] + torch.matmul(weights["time.weight"], time)
    if torch.compiler.is_compiling() and weights["head.weight"].dim() == 2:
        return _mlp_unrolled(weights, x, biases)
    step = max(1, MLP_COORDINATES // x.shape[0])
    outs = []
    for chunk in x.split(step, dim=-1):
        for k, bias in enumerate(biases):
            chunk = torch.relu(_linear(chunk, weights[f"layers.{k}.weight"], bias))
        outs.append(_linear(chunk, weights["head.weight"], weights["head.bias"]))
    return torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]


def _mlp_unrolled(weights: dict, x: torch.Tensor, biases: list) -> torch.Tensor:
    """``_mlp`` written unit by unit with scalar weights: compiled, it fuses into one loop over the coordinates that
    keeps every hidden unit in registers, where matmuls this narrow (6 -> 16 -> 2) leave the step memory-bound
    (docs/use-anywhere.md#what-a-step-costs). Shared weights only (one set for every row)."""
    units = list(x.unbind(dim=-2))
    for k, bias in enumerate(biases):
        weight = weights[f"layers.{k}.weight"]
        units = [torch.relu(sum(weight[j, i] * u for i, u in enumerate(units)) + bias[j]) for j in range(len(bias))]
    head, head_bias = weights["head.weight"], weights["head.bias"]
    return torch.stack([sum(head[o, j] * u for j, u in enumerate(units)) + head_bias[o] for o in range(2)], dim=-2)


def adam_mlp_step(cfg: AdamMLPConfig, weights: dict, grad, state, corrections, time, sizes, stretch):
    """One step of ``AdamMLP`` with the given weights (each with or without a leading copy dimension matching
    grad's rows): grad (rows, columns) -> (update, [v, *momenta, h]); ``stretch`` scales h's rate
    (``adapt_stretch``)."""
    decays = len(cfg.momentum_decays)
    v = cfg.beta2 * state[0] + (1 - cfg.beta2) * grad * grad
    scale = (v * corrections[-1]).sqrt()
    denom = scale + cfg.eps
    momenta = [b * m + (1 - b) * grad for b, m in zip(cfg.momentum_decays, state[1:1 + decays], strict=True)]
    directions = [m * corrections[k] / denom for k, m in enumerate(momenta)]
    features = torch.stack([grad / denom, *directions, scale], dim=-2)  # (rows, F, columns)
    rms = tensor_rms(features, sizes)
    features = per_tensor(features, 1 / (rms + TINY), sizes)
    adapted = []
    if cfg.adapt_range > 0:  # h moves by rate * cos(g, m_prev) of each tensor: scale-free, bounded
        previous = state[1 + cfg.nominal]
        agreement = tensor_mean(grad * previous, sizes) / (tensor_rms(grad, sizes) * tensor_rms(previous, sizes)
                                                          + TINY)
        rate = weights["adapt_rate"].reshape(-1, *([1] * (agreement.dim() - 1))) * stretch
        adapted = [(state[-1] + per_tensor(torch.ones_like(grad), rate * agreement, sizes)).clamp(
            -cfg.adapt_range, cfg.adapt_range)]
        features = torch.cat([features, adapted[0].unsqueeze(-2)], dim=-2)
    out = _mlp(cfg, weights, features, time)
    nominal = directions[cfg.nominal]
    nominal_rms = rms[:, 1 + cfg.nominal]  # the nominal direction is feature 1 + nominal
    log_lr = weights["log_lr"].clamp(math.log(cfg.min_lr), math.log(cfg.max_lr)).reshape(-1, 1)
    log_size = log_lr + cfg.lr_range * torch.tanh(out[..., 1, :])
    size = torch.exp(log_size + adapted[0] if adapted else log_size)
    correction = per_tensor(torch.tanh(out[..., 0, :]), nominal_rms, sizes)  # in units of the tensor's rms of a
    update = -size * (nominal + cfg.correction * correction)
    return update, [v, *momenta, *adapted]


OPTIMIZERS.register("adam_mlp", AdamMLPConfig, AdamMLP, learned=True, adapt_range=3.0)
