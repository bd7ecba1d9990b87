"""Validation during meta-training: the learned optimizer's selection score on fixed functions of the family (drawn
once per horizon from the data seed, the same for every training seed and member)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from l2l_cli.evaluation.rollout import selection_score
from l2l_cli.meta.distributed import Rank, distributed_score
from l2l_cli.optimizees.base import Family, held_out_problems


class Validator:
    """A family's fixed validation functions per horizon; for a mixture (``member_families``), each member's own at
    its longest run, the score then the geometric mean of the members' scores (each member counts alike, whatever
    the size of its losses) and ``parts`` every member's."""

    def __init__(self, family: Family, num_functions: int, data_seed: int, device: torch.device,
                 rank: Optional[Rank] = None):
        self.family, self.num_functions, self.data_seed, self.device, self.rank = (family, num_functions, data_seed,
                                                                                   device, rank)
        self.problems: dict = {}  # (member, horizon) -> its fixed functions
        members = getattr(family, "member_families", None)
        self.members = members() if callable(members) else None
        self.parts: dict = {}  # member -> its score at the last validation

    def score(self, net, steps: int) -> float:
        """``net``'s selection score over runs of ``steps`` steps (in eval mode; shared out over the ranks)."""
        net.eval()
        try:
            if self.members is None:
                return self._score(None, self.family, net, steps)
            self.parts = {name: self._score(name, family, net, horizon)
                          for name, (family, horizon) in self.members.items()}
            return geometric_mean(list(self.parts.values()))
        finally:
            net.train()

    def _score(self, member, family: Family, net, steps: int) -> float:
        if (member, steps) not in self.problems:
            self.problems[member, steps] = held_out_problems(family, self.num_functions, steps, self.data_seed,
                                                             "validation", self.device, key="train.val_functions")
        problem = self.problems[member, steps]
        if self.rank is None:
            return selection_score(family, problem, net, steps)
        return distributed_score(family, problem, net, steps, self.rank)


def geometric_mean(scores: list) -> float:
    """exp(mean log), each floored at 1e-30: +inf when any is not finite (a diverged member is not averaged away)."""
    if any(not math.isfinite(s) for s in scores):
        return math.inf
    return math.exp(sum(math.log(max(s, 1e-30)) for s in scores) / len(scores))
