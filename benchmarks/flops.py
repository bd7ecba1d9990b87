"""FLOP counts the benchmarks compare with the matmul FLOP/s: the LSTM's and the MLP's formulas, torch's
FlopCounterMode for everything else, and the forward-pass equivalents a meta-gradient estimator spends."""

from __future__ import annotations

import torch

from l2l_cli.meta.estimators.perturbed import copies_per_function
from l2l_cli.meta.trainer import MetaTrainer
from l2l_cli.optimizees import loss_and_grad
from l2l_cli.optimizees.mnist import MLPConfig
from l2l_cli.optimizers.learned.lstm import LSTMConfig

ADAM_FLOPS_PER_PARAMETER = 12  # Adam's elementwise update


def counted_flops(fn) -> int:
    """FLOPs of one call of fn(), as torch's FlopCounterMode counts them (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def lstm_forward_flops(cfg: LSTMConfig) -> int:
    """Matmul FLOPs of one coordinate's forward step: each layer's [x, h] @ W (4H gates) and the linear head."""
    in_size = 1 if cfg.preprocess == "none" else 2
    flops = 0
    for _ in range(cfg.layers):
        flops += 2 * (in_size + cfg.hidden_size) * 4 * cfg.hidden_size
        in_size = cfg.hidden_size
    return flops + 2 * cfg.hidden_size


def adam_mlp_forward_flops(cfg) -> int:
    """Matmul FLOPs of one coordinate's adam_mlp step: features -> hidden layers -> (d, s)."""
    features = len(cfg.momentum_decays) + 2 + (getattr(cfg, "adapt_range", 0) > 0)
    widths = [features] + [cfg.hidden_size] * cfg.hidden_layers + [2]
    return sum(2 * a * b for a, b in zip(widths[:-1], widths[1:], strict=False))


def learned_step_flops(cfg) -> int:
    """Matmul FLOPs of one coordinate's step of a drop-in learned optimizer (lstm or adam_mlp)."""
    return adam_mlp_forward_flops(cfg) if cfg.name == "adam_mlp" else lstm_forward_flops(cfg)


def mlp_forward_backward_flops(cfg: MLPConfig, num_params_weights: int) -> int:
    """Matmul FLOPs of one optimizee's loss and gradient: forward 2 x minibatch x weights, backward twice that."""
    return 3 * 2 * cfg.minibatch * num_params_weights


def step_flops(trainer: MetaTrainer) -> int:
    """FLOPs of one coordinate's forward step of the trainer's learned optimizer: the LSTMs' formula, or for other
    architectures (GACs, a memory, moments) torch's FlopCounterMode over one step of a function of the family."""
    if isinstance(trainer.s.optimizer, LSTMConfig):
        return lstm_forward_flops(trainer.s.optimizer)
    grad = torch.randn(1, trainer.s.family.num_params)
    state = trainer.net.init_state(grad)
    with torch.no_grad():
        flops = counted_flops(lambda: trainer.net.step(grad, state, 0))
    return round(flops / grad.numel())


def forward_passes(trainer: MetaTrainer) -> int:
    """Learned-optimizer forward-pass equivalents per coordinate-step of the trainer's estimator: forward + backward
    (3) for one that differentiates (truncated BPTT); else one forward per perturbed copy: es 2 x pairs + the
    unperturbed one, pes 2 x pairs."""
    if trainer.estimator.differentiates:
        return 3
    cfg = trainer.estimator.config
    return copies_per_function(cfg.pairs, persistent=cfg.name == "pes")


def coordinate_steps(trainer: MetaTrainer) -> int:
    """Coordinate-steps of one meta-iteration: functions x coordinates x optimizee steps."""
    return trainer.s.batch_size * trainer.s.family.num_params * trainer.s.schedule.num_steps


def model_flops(trainer: MetaTrainer) -> int:
    """The learned optimizer's FLOPs in one meta-iteration (its forward and, where the estimator differentiates,
    backward passes)."""
    return forward_passes(trainer) * step_flops(trainer) * coordinate_steps(trainer)


def optimizee_work(trainer: MetaTrainer, device):
    """(fn, FLOPs): fn computes the optimizee's losses and gradients for one meta-iteration's steps on a batch of
    training functions, as the unroll does (the CNN's forward and backward for Neural Art); FLOPs counted by
    torch's FlopCounterMode."""
    s = trainer.s
    problem = s.family.sample(s.batch_size, s.schedule.num_steps, torch.Generator().manual_seed(0), device)
    theta = s.family.initial_params(problem)

    def fn() -> None:
        for t in range(s.schedule.num_steps + 1):
            loss_and_grad(s.family, problem, theta, t)

    return fn, counted_flops(lambda: loss_and_grad(s.family, problem, theta, 0)) * (s.schedule.num_steps + 1)
