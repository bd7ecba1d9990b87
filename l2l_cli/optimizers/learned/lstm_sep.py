"""LSTM-sep: one coordinatewise LSTM per group of the optimizee's parameter tensors (the paper's CIFAR experiment,
the original code's multi-net setup: conv weights to one net; conv biases, batch norm and fully connected
parameters to another). Which tensor goes to which net is config: rules on the family's tensor names."""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass, field
from typing import Dict, List

import torch
from torch import nn

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import ConfigError, check
from l2l_cli.optimizers.learned.base import LearnedRule
from l2l_cli.optimizers.learned.lstm import CoordinatewiseLSTM, LSTMConfig

log = logging.getLogger("l2l.optimizer")


@dataclass
class LSTMSepConfig(LSTMConfig):
    """Separate coordinatewise LSTMs (same size and preprocessing each) for groups of parameter tensors."""

    name: str = "lstm_sep"
    # one rule per group, "name: pattern pattern ...", shell patterns on tensor names (``conv1.weight``,
    # ``fc1_bn.bias``; 'theta' for families that name no tensors); every tensor goes to the FIRST group with a
    # matching pattern. A list, so that a command-line value replaces the rules rather than merging into them.
    groups: List[str] = field(default_factory=lambda: ["conv: conv*.weight", "other: *"])

    def __post_init__(self) -> None:
        super().__post_init__()
        self.groups = [str(rule) for rule in self.groups]
        check(len(self.groups) >= 1, "optimizer.groups", "must hold at least one rule 'name: pattern ...'")
        rules = parse_groups(self.groups)
        check(len(rules) == len(self.groups), "optimizer.groups", f"a group is named twice in {self.groups}")

    def architecture(self) -> dict:
        return {**super().architecture(), "groups": self.groups}  # other rules: other networks

    def rules(self) -> Dict[str, List[str]]:
        """group -> its patterns, in the order written."""
        return parse_groups(self.groups)


def parse_groups(groups: List[str]) -> Dict[str, List[str]]:
    """["conv: conv*.weight", "other: *"] -> {"conv": ["conv*.weight"], "other": ["*"]}; one line naming the key
    for a malformed rule."""
    rules = {}
    for rule in groups:
        name, sep, patterns = rule.partition(":")
        name, patterns = name.strip(), patterns.split()
        check(bool(sep) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None and len(patterns) >= 1,
              "optimizer.groups", f"each rule is 'name: pattern [pattern ...]' with a Python identifier as the name, "
              f"got {rule!r}")
        rules[name] = patterns
    return rules


def assign_groups(layout, groups: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """group -> the names of its tensors: each tensor to the first group with a pattern matching its name."""
    assignment = {g: [] for g in groups}
    for name, _ in layout:
        group = next((g for g, patterns in groups.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)),
                     None)
        if group is None:
            raise ConfigError(f"optimizer.groups: no rule takes the optimizee's tensor {name!r} (rules: "
                              f"{groups}); end with a rule 'other: *' to take the rest")
        assignment[group].append(name)
    return assignment


class SeparateLSTMs(LearnedRule):
    """One ``CoordinatewiseLSTM`` per group; a coordinate's update comes from its group's LSTM alone."""

    def __init__(self, cfg: LSTMSepConfig):
        super().__init__(cfg)
        member = LSTMConfig(hidden_size=cfg.hidden_size, layers=cfg.layers, preprocess=cfg.preprocess,
                            preprocess_p=cfg.preprocess_p, output_scale=cfg.output_scale)
        self.nets = nn.ModuleDict({g: CoordinatewiseLSTM(member) for g in cfg.rules()})
        self._layout = None
        self._assignment: Dict[str, List[str]] = {}
        self._columns: List[torch.Tensor] = []  # per group: its columns of theta
        self._order = torch.zeros(0, dtype=torch.int64)  # columns of [group 1 | group 2 | ...] back to theta's

    def bind(self, layout, horizon: int | None = None) -> None:
        layout = tuple((str(n), int(s)) for n, s in layout)
        if layout == self._layout:
            return
        assignment = assign_groups(layout, self.config.rules())
        starts, offset = {}, 0
        for name, size in layout:
            starts[name] = (offset, offset + size)
            offset += size
        self._columns = [torch.cat([torch.arange(*starts[n]) for n in names]) if names else
                         torch.zeros(0, dtype=torch.int64) for names in assignment.values()]
        self._order = torch.cat(self._columns).argsort()
        for group, names in assignment.items():
            if not names:
                log.warning("optimizer.groups: %s takes none of the optimizee's tensors (%s); its LSTM stays unused",
                            group, ", ".join(n for n, _ in layout))
        self._layout, self._assignment = layout, assignment

    def binding(self) -> dict | None:
        return {g: list(names) for g, names in self._assignment.items()} if self._layout is not None else None

    def _check_bound(self, columns: int) -> None:
        if self._layout is None:  # used outside a family's runs: theta is one tensor
            self.bind((("theta", columns),))
        elif self._order.numel() != columns:
            raise RuntimeError(f"lstm_sep was bound to an optimizee with {self._order.numel()} parameters, "
                               f"got {columns}")

    def init_state(self, theta: torch.Tensor):
        self._check_bound(theta.shape[-1])
        n = theta.numel() // theta.shape[-1]
        return [net.initial_state(n * len(cols), theta.device, theta.dtype)
                for net, cols in zip(self.nets.values(), self._columns, strict=True)]

    def step(self, grad: torch.Tensor, state, t: int = 0):
        self._check_bound(grad.shape[-1])
        return self(grad, state)

    def forward(self, grad: torch.Tensor, state):
        """grad (n, P) -> (update (n, P), per group its LSTM's state): each group's columns through its LSTM."""
        n = grad.shape[0]
        if self._order.device != grad.device:  # once, not a host-to-device copy per step
            self._columns = [c.to(grad.device) for c in self._columns]
            self._order = self._order.to(grad.device)
        pieces, new_state = [], []
        for net, cols, st in zip(self.nets.values(), self._columns, state, strict=True):
            if len(cols) == 0:
                new_state.append(st)
                continue
            update, st = net(grad[:, cols].reshape(-1), st)
            pieces.append(update.view(n, len(cols)))
            new_state.append(st)
        return torch.cat(pieces, dim=1)[:, self._order], new_state


OPTIMIZERS.register("lstm_sep", LSTMSepConfig, SeparateLSTMs, learned=True)
