"""A mixture of registered families for meta-training an optimizer that must serve many tasks (``optimizee=mixture``).

Each meta-iteration draws one member with probability proportional to its ``weight`` and a run length log-uniform in
its ``steps`` range, then ``batch_size`` functions of that member with their own data; every training function is
reparameterised f(s * theta') with s = exp(U(-c, c)) per parameter times exp(U(-c_t, c_t)) per named tensor
(``optimizees.rescaled``), so no scale of a member's parameters can be memorised. Held-out functions (validation,
evaluation) come from each member itself, never rescaled: validation scores every member on its own functions at its
longest run, and evaluation without ``eval.variants`` evaluates each member as a variant.

A batch holds one member's functions, so its parameter count and tensors are the member's (``tensors_of``,
``horizon_of``); ``num_params`` is the largest member's, a bound for memory checks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch

from l2l_cli.core.checks import ConfigError, check
from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.core.schemas import OptimizeeConfig, Suggested
from l2l_cli.optimizees import build_family, family_config
from l2l_cli.optimizees.base import parameter_layout
from l2l_cli.optimizees.rescaled import RescaledFamily

MEMBER_KEYS = ("name", "optimizee", "weight", "steps")


def _default_members() -> List[Any]:
    return [
        {"name": "quadratic_10", "optimizee": {"name": "quadratic", "dim": 10}, "steps": [50, 200]},
        {"name": "quadratic_30", "optimizee": {"name": "quadratic", "dim": 30}, "steps": [50, 200]},
        {"name": "mlp_sigmoid", "optimizee": {"name": "mnist", "hidden": 20}, "steps": [50, 200]},
        {"name": "mlp_relu_2x32", "optimizee": {"name": "mnist", "hidden": 32, "layers": 2, "activation": "relu"},
         "steps": [50, 200]},
        {"name": "mlp_tanh_10", "optimizee": {"name": "mnist", "hidden": 10, "activation": "tanh"},
         "steps": [50, 200]},
    ]


@dataclass
class Member:
    name: str
    optimizee: Any  # the member family's config dataclass
    weight: float
    steps: List[int]  # [shortest, longest] run length


@dataclass
class MixtureConfig(OptimizeeConfig):
    """Functions from several registered families (``members``: a list of {name, optimizee: {name: <family>, <its
    keys>}, weight: relative frequency (default 1), steps: [shortest, longest] run length}; a list, so that a
    command-line value replaces the members rather than merging into them; a mapping name -> member is read too)."""

    name: str = "mixture"
    batch_size: int = 8  # functions per meta-iteration, all of one member
    members: Any = field(default_factory=_default_members)
    # meta-training's reparameterisation, in nats: per parameter exp(U(-c, c)), per tensor exp(U(-c_t, c_t))
    # (4.6: factors 0.01 to 100)
    parameter_scale: float = 1.0
    tensor_scale: float = 4.6
    suggested: Suggested = field(default_factory=lambda: Suggested(
        iterations=2000, val_every=50, val_functions=16, tune_functions=64, test_functions=256, weighting="log"))

    def check_fields(self) -> None:
        for key in ("parameter_scale", "tensor_scale"):
            value = getattr(self, key)
            check(math.isfinite(value) and value >= 0, f"optimizee.{key}", f"must be a number >= 0, got {value}")
        members = self.members
        if isinstance(members, dict):
            members = [{"name": k, **v} if isinstance(v, dict) else v for k, v in members.items()]
        check(isinstance(members, (list, tuple)) and len(members) >= 1, "optimizee.members",
              "must list at least one member: [{name: ..., optimizee: {name: <family>, ...}, steps: [a, b]}]")
        parsed = [m if isinstance(m, Member) else parse_member(k, m) for k, m in enumerate(members)]
        names = [m.name for m in parsed]
        check(len(set(names)) == len(names), "optimizee.members", f"two members share a name: {names}")
        self.members = {m.name: m for m in parsed}

    def member_list(self) -> List[Member]:
        return list(self.members.values())


def parse_member(index: int, spec: Any) -> Member:
    """One member's spec as a ``Member``: its family's defaults with the fields given; one line naming the key
    (``optimizee.members.<name or index>``) for anything wrong."""
    key = f"optimizee.members.{index}"
    check(isinstance(spec, dict), key, f"must be {{name: ..., optimizee: ..., steps: [a, b]}}, got {spec!r}")
    name = spec.get("name")
    check(isinstance(name, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) is not None, f"{key}.name",
          f"must be an identifier (letters, digits, _), got {name!r}")
    key = f"optimizee.members.{name}"
    unknown = sorted(set(spec) - set(MEMBER_KEYS))
    check(not unknown, f"{key}.{unknown[0] if unknown else ''}", f"unknown key, allowed keys: {', '.join(MEMBER_KEYS)}")
    check(isinstance(spec.get("optimizee"), dict), f"{key}.optimizee",
          f"must be {{name: <family>, <its keys>}}, got {spec.get('optimizee')!r}")
    optimizee = family_config(spec["optimizee"], f"{key}.optimizee")
    check(optimizee.name != "mixture", f"{key}.optimizee.name", "a member cannot itself be a mixture")
    weight = spec.get("weight", 1.0)
    check(isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0, f"{key}.weight",
          f"must be a number > 0, got {weight!r}")
    steps = spec.get("steps", [100, 100])
    check(isinstance(steps, (list, tuple)) and len(steps) == 2
          and all(isinstance(s, int) and s >= 1 for s in steps) and steps[0] <= steps[1],
          f"{key}.steps", f"must be [shortest, longest] whole numbers >= 1, shortest first, got {steps!r}")
    return Member(name, optimizee, float(weight), list(steps))


@dataclass
class MixtureProblems:
    member: str
    problem: Any  # the member's batch, rescaled where the config asks
    num_steps: int

    def __len__(self) -> int:
        return len(self.problem)


class MixtureFamily:
    def __init__(self, cfg: MixtureConfig):
        self.config = cfg
        self.members = {m.name: m for m in cfg.member_list()}
        self.families = {m.name: build_family(m.optimizee) for m in cfg.member_list()}
        self.training = {name: RescaledFamily(f, cfg.parameter_scale, cfg.tensor_scale) if
                         (cfg.parameter_scale > 0 or cfg.tensor_scale > 0) else f
                         for name, f in self.families.items()}
        self.num_params = max(f.num_params for f in self.families.values())
        self.stationary = all(f.stationary for f in self.families.values())
        weights = torch.tensor([m.weight for m in self.members.values()], dtype=torch.float64)
        self.probabilities = weights / weights.sum()

    def member_families(self) -> Dict[str, Any]:
        """name -> (its family, its longest run): what validation and evaluation score one by one."""
        return {name: (self.families[name], m.steps[1]) for name, m in self.members.items()}

    def sample(self, n: int, num_steps: int, gen: torch.Generator, device=None, split: str = "train"):
        """Training: a member by weight, a run length log-uniform in its steps (``horizon_of``: what meta-training
        runs instead of ``num_steps``), n of its functions, rescaled. Held-out splits come from the members
        themselves (``member_families``)."""
        if split != "train":
            raise ConfigError(f"optimizee=mixture: {split} functions come from each member separately "
                              f"({', '.join(self.members)}); evaluate with eval.variants or `l2l train`")
        k = int(torch.multinomial(self.probabilities, 1, generator=gen))
        name = list(self.members)[k]
        lo, hi = self.members[name].steps
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        steps = int(round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))))
        # data for the longer of the two, so a caller that runs num_steps regardless finds every step's minibatch
        problem = self.training[name].sample(n, max(steps, num_steps), gen, device, split=split)
        return MixtureProblems(name, problem, steps)

    def _of(self, problem: MixtureProblems):
        return self.training[problem.member]

    def initial_params(self, problem: MixtureProblems) -> torch.Tensor:
        return self._of(problem).initial_params(problem.problem)

    def select(self, problem: MixtureProblems, start: int, stop: int) -> MixtureProblems:
        return type(problem)(problem.member, self._of(problem).select(problem.problem, start, stop), problem.num_steps)

    def repeat(self, problem: MixtureProblems, times: int) -> MixtureProblems:
        return type(problem)(problem.member, self._of(problem).repeat(problem.problem, times), problem.num_steps)

    def loss(self, problem: MixtureProblems, theta: torch.Tensor, step: int) -> torch.Tensor:
        return self._of(problem).loss(problem.problem, theta, step)

    def analytic_loss_and_grad(self, problem: MixtureProblems, theta: torch.Tensor, step: int):
        return self._of(problem).analytic_loss_and_grad(problem.problem, theta, step)

    def expected_loss(self, problem: MixtureProblems, theta: torch.Tensor) -> torch.Tensor:
        return self._of(problem).expected_loss(problem.problem, theta)

    def tensors_of(self, problem: MixtureProblems):
        return [(name, (size,)) for name, size in parameter_layout(self._of(problem), problem.problem)]

    def horizon_of(self, problem: MixtureProblems) -> int:
        """This batch's run length (its member's draw)."""
        return problem.num_steps

    def group_of(self, problem: MixtureProblems) -> str:
        """The batch's member, the group train.balance_members balances."""
        return problem.member

    def data_record(self) -> dict:
        return {name: f.data_record() for name, f in self.families.items()}


OPTIMIZEES.register("mixture", MixtureConfig, MixtureFamily, tiny={"members": [
    {"name": "quadratic_3", "optimizee": {"name": "quadratic", "dim": 3}, "steps": [3, 6]},
    {"name": "mlp_4", "optimizee": {"name": "mnist", "hidden": 4, "activation": "relu"}, "steps": [3, 6]}]})
