"""Gradient preprocessing for the coordinatewise LSTM (paper, Appendix A, and the original code's variant)."""

from __future__ import annotations

import math

import torch

PREPROCESSING = ("none", "paper", "deepmind")


def num_features(kind: str) -> int:
    return 1 if kind == "none" else 2


def preprocess(grad: torch.Tensor, kind: str, p: float = 10.0) -> torch.Tensor:
    """Map gradients of shape (N,) to LSTM inputs of shape (N, num_features(kind)).

    paper:    (log|x| / p, sign x) if |x| >= e^-p, else (-1, e^p x)   -- scale-free magnitude and sign
    deepmind: (clamp(log(|x| + eps) / k, min=-1), clamp(x e^k, -1, 1)) with k = p -- the code's LogAndSign
    none:     x itself
    """
    if kind == "none":
        return grad.unsqueeze(-1)
    if kind == "paper":
        absg = grad.abs()
        big = absg >= math.exp(-p)
        # clamp keeps log finite on the branch that torch.where discards, so no NaN leaks into gradients
        log_part = torch.where(big, absg.clamp_min(math.exp(-p)).log() / p, torch.full_like(grad, -1.0))
        sign_part = torch.where(big, torch.sign(grad), grad * math.exp(p))
        return torch.stack((log_part, sign_part), dim=-1)
    if kind == "deepmind":
        eps = torch.finfo(grad.dtype).eps
        log_part = torch.clamp((grad.abs() + eps).log() / p, min=-1.0)
        sign_part = torch.clamp(grad * math.exp(p), -1.0, 1.0)
        return torch.stack((log_part, sign_part), dim=-1)
    raise ValueError(f"optimizer.preprocess: got {kind!r}, allowed values: none, paper, deepmind")
