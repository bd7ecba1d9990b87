"""Learned optimizers: one module per architecture, each its config dataclass (extending
``core.schemas.LearnedOptimizerConfig``), a ``base.LearnedRule`` subclass built from it, and
``OPTIMIZERS.register(name, Config, Class, learned=True)``; plus ``conf/optimizer/<name>.yaml``.
"""

from l2l_cli.core.checks import ConfigError
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.learned.base import LearnedRule


def build_learned(cfg) -> LearnedRule:
    """The learned optimizer for its config dataclass, through the registry."""
    entry = OPTIMIZERS.get(cfg.name)
    if not entry.learned:
        raise ConfigError(f"optimizer: {cfg.name!r} is a baseline, not a learned optimizer; allowed values: "
                          f"{', '.join(OPTIMIZERS.learned())}")
    return entry.build(cfg)


__all__ = ["LearnedRule", "build_learned"]
