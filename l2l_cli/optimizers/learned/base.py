"""The interface every learned optimizer follows, so meta-training, evaluation, checkpoints and writers know no
architecture by name."""

from __future__ import annotations

import abc
from typing import Any, Tuple

import torch
from torch import nn

from l2l_cli.optimizees.base import parameter_layout


class LearnedRule(nn.Module, metaclass=abc.ABCMeta):
    """A meta-trainable update rule for a batch of optimizees: theta_{t+1} = theta_t + update.

    Built from its config dataclass (``Cls(cfg)``, kept as ``self.config``). Gradients and updates are shaped
    (functions, parameters): an architecture may share information between the coordinates of one optimizee (a
    global average, a memory) but never across optimizees, which the contract tests check. The state is any
    nesting of lists and tuples of tensors. The per-step computation sits in ``forward``, which ``compile=true``
    wraps with torch.compile; ``step`` is what callers use.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @abc.abstractmethod
    def init_state(self, theta: torch.Tensor) -> Any:
        """The state for a batch of optimizees whose parameters are theta (functions, parameters)."""

    @abc.abstractmethod
    def step(self, grad: torch.Tensor, state: Any, t: int = 0) -> Tuple[torch.Tensor, Any]:
        """(update, new state) from the gradients at theta_t, both (functions, parameters); t: the step index."""

    def detach_state(self, state: Any) -> Any:
        """The state with its autograd history cut, between truncated unrolls."""
        if isinstance(state, torch.Tensor):
            return state.detach()
        if isinstance(state, (list, tuple)):
            return type(state)(self.detach_state(s) for s in state)
        return state

    # The update of a coordinate depends on that coordinate's own gradients alone (the paper's LSTM; not one that
    # averages or remembers across coordinates). Such an architecture also runs as a torch.optim.Optimizer on any
    # model (``l2l_cli.LearnedOptimizer``), which cuts and joins its state per parameter tensor: every state tensor
    # must then hold the coordinates, functions x parameters flattened, along its last dimension.
    coordinatewise: bool = False

    def bind(self, layout, horizon: int | None = None) -> None:
        """Meet a family's parameter layout (``optimizees.base.parameter_layout``: (name, size) per named tensor)
        and the runs' length in steps (None where unknown) before its runs start; an architecture that treats
        tensors differently (parameter groups, per-tensor statistics) or uses the fraction of the run done reads
        them here."""

    def binding(self) -> dict | None:
        """What ``bind`` made of the layout, for checkpoints (group -> tensor names); None where nothing."""
        return None

    # A hand-written first-order BPTT is optional and lives with meta-training (meta/estimators/), which registers it
    # for the architecture (``estimators.tbptt.register_fast_path``); every other one meta-trains through autograd.


def bind_to_family(rule, family, problem=None, horizon: int | None = None) -> None:
    """``rule.bind`` to the parameter layout of ``problem`` (of the family's where it has one layout) and the runs'
    horizon, where ``rule`` is a learned optimizer (baselines need neither)."""
    if isinstance(rule, LearnedRule):
        rule.bind(parameter_layout(family, problem), horizon)
