"""Optimizee families: distributions over functions f(theta) that an optimizer is trained or tested on.

A family is one module here: its config dataclass (extending ``schemas.OptimizeeConfig``), a class following
``base.Family``, and ``OPTIMIZEES.register(name, Config, Family)``; plus ``conf/optimizee/<name>.yaml``.
"""

from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.optimizees.base import DataError, Family, loss_and_grad


def build_family(cfg) -> Family:
    """The family for an optimizee config dataclass, through the registry."""
    return OPTIMIZEES.get(cfg.name).build(cfg)


__all__ = ["DataError", "Family", "OPTIMIZEES", "build_family", "loss_and_grad"]
