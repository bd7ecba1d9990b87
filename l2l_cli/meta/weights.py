"""A learned optimizer's weights as one flat vector and back (worker processes, weight averaging)."""

from __future__ import annotations

import torch


def split_like(flat: torch.Tensor, params) -> list:
    """Views of a flat vector shaped as each parameter in turn (the inverse of parameters_to_vector)."""
    views, offset = [], 0
    for p in params:
        views.append(flat[offset: offset + p.numel()].view_as(p))
        offset += p.numel()
    return views


@torch.no_grad()
def copy_into(params, values) -> None:
    """In place, so compiled steps keep reading the same parameter tensors: ``values`` is a list of tensors shaped
    as ``params`` or one flat vector."""
    if isinstance(values, torch.Tensor):
        values = split_like(values, params)
    for p, value in zip(params, values, strict=True):
        p.copy_(value)
