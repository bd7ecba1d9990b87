"""Optimizers applied to a batch of optimizees: learned ones (``base.LearnedOptimizer``) and the hand-designed
baselines. Both have ``init_state(theta) -> state`` and ``step(grad, state, t) -> (update, state)`` with
theta_{t+1} = theta_t + update, so rollouts, validation and evaluation treat them alike.

A learned optimizer is one module here: its config dataclass (extending ``schemas.LearnedOptimizerConfig``), a
``LearnedOptimizer`` subclass built from it, and ``OPTIMIZERS.register(name, Config, Class, learned=True)``; plus
``conf/optimizer/<name>.yaml``.
"""

from l2l_cli.optimizers.base import LearnedOptimizer
from l2l_cli.optimizers.baselines import Baseline, baseline_config
from l2l_cli.registry import OPTIMIZERS


def build_learned(cfg) -> LearnedOptimizer:
    """The learned optimizer for its config dataclass, through the registry."""
    entry = OPTIMIZERS.get(cfg.name)
    if not entry.learned:
        from l2l_cli.schemas import ConfigError

        raise ConfigError(f"optimizer: {cfg.name!r} is a baseline, not a learned optimizer; allowed values: "
                          f"{', '.join(OPTIMIZERS.learned())}")
    return entry.build(cfg)


__all__ = ["OPTIMIZERS", "Baseline", "LearnedOptimizer", "baseline_config", "build_learned"]
