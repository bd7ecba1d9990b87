"""What every hand-designed optimizer (baseline) is: a config with its learning rate and a ``Baseline`` subclass with
the learned optimizers' ``init_state`` / ``step``, registered by its own module.

A baseline works on a (B, P) tensor of B optimizees at once; every operation is elementwise, so each row evolves
exactly as one separate run would. Where torch.optim has the same optimizer, ``torch_reference`` builds it and the
tests check the two agree step by step (tests/test_baselines.py runs every registered baseline); where it has none,
the tests hold the update rule as published instead.

Adding one is a module here (its config dataclass, its ``Baseline`` subclass, ``OPTIMIZERS.register(name, Config,
Class)``) and ``conf/optimizer/<name>.yaml``; ``eval.baselines`` chooses which ones an evaluation tunes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import torch

from l2l_cli.core.checks import MISSING, ConfigError, check, check_choice
from l2l_cli.core.registry import OPTIMIZERS


@dataclass
class BaselineConfig:
    """What every baseline's config has: its registered name and ``lr`` (null: tune it on the validation functions
    over eval.lr_grid). A subclass adds its own hyperparameters and checks them in ``check_fields``."""

    name: str = MISSING
    lr: Optional[float] = None

    def __post_init__(self) -> None:
        check_choice(self.name, "optimizer.name", tuple(sorted(OPTIMIZERS.baselines())))
        check(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "optimizer.lr",
              f"must be a positive number or null (tune), got {self.lr}")
        self.check_fields()

    def check_fields(self) -> None:
        """The baseline's own range checks."""

    def check_decay(self, *keys: str) -> None:
        """Each of ``keys`` (a decay rate: momentum, a beta) in [0, 1)."""
        for key in keys:
            value = getattr(self, key)
            check(0 <= value < 1, f"optimizer.{key}", f"must be in [0, 1), got {value}")

    def check_positive(self, *keys: str) -> None:
        for key in keys:
            value = getattr(self, key)
            check(math.isfinite(value) and value > 0, f"optimizer.{key}", f"must be > 0, got {value}")

    def check_non_negative(self, *keys: str) -> None:
        for key in keys:
            value = getattr(self, key)
            check(math.isfinite(value) and value >= 0, f"optimizer.{key}", f"must be >= 0 (0 = off), got {value}")


class Baseline(ABC):
    """One hand-designed optimizer at one learning rate: ``init_state(theta) -> state`` and ``step(grad, state, t)
    -> (update, state)`` with theta_{t+1} = theta_t + update, on (B, P) tensors. ``build_baseline(cfg, lr)``
    builds the one registered under ``cfg.name``.
    """

    def __init__(self, cfg: BaselineConfig, lr: float):
        self.cfg = cfg
        self.name = cfg.name
        self.lr = lr

    def init_state(self, theta: torch.Tensor) -> dict:
        return {}

    @abstractmethod
    def step(self, grad: torch.Tensor, state: dict, t: int) -> Tuple[torch.Tensor, dict]:
        """The update of every row and the state after it."""

    def torch_reference(self, params: Iterable[torch.Tensor]) -> Optional[torch.optim.Optimizer]:
        """The torch.optim optimizer this baseline follows, over ``params`` with this config and learning rate, or
        None where torch has none (the tests then need the published rule)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg}, lr={self.lr})"


def _entry(name: str):
    entry = OPTIMIZERS.get(name)
    if entry.learned:
        raise ConfigError(f"optimizer: {name!r} is a learned optimizer, not a baseline; allowed values: "
                          f"{', '.join(sorted(OPTIMIZERS.baselines()))}")
    return entry


def build_baseline(cfg: BaselineConfig, lr: float) -> Baseline:
    """The baseline registered under ``cfg.name``, at learning rate ``lr``."""
    return _entry(cfg.name).build(cfg, lr)


def baseline_config(name: str) -> BaselineConfig:
    """A baseline's config with its registered defaults (learning rate: tuned)."""
    return _entry(name).default_config()
