"""Optimizee families: distributions over functions f(theta) that an optimizer is trained or tested on."""

from l2l_cli.optimizees.base import DataError, Family, loss_and_grad
from l2l_cli.optimizees.quadratic import QuadraticFamily


def build_family(cfg) -> Family:
    """Family for an optimizee config dataclass."""
    if cfg.name == "quadratic":
        return QuadraticFamily(dim=cfg.dim, distribution=cfg.distribution, init_std=cfg.init_std)
    raise ValueError(f"optimizee.name: unknown family {cfg.name!r}")


__all__ = ["DataError", "Family", "QuadraticFamily", "build_family", "loss_and_grad"]
