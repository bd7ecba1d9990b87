"""Validation during meta-training: the learned optimizer's selection score on fixed functions of the family (drawn
once per horizon from the data seed, the same for every training seed and member)."""

from __future__ import annotations

from typing import Optional

import torch

from l2l_cli.evaluation.rollout import selection_score
from l2l_cli.meta.distributed import Rank, distributed_score
from l2l_cli.optimizees.base import Family, held_out_problems


class Validator:
    def __init__(self, family: Family, num_functions: int, data_seed: int, device: torch.device,
                 rank: Optional[Rank] = None):
        self.family, self.num_functions, self.data_seed, self.device, self.rank = (family, num_functions, data_seed,
                                                                                   device, rank)
        self.problems: dict = {}  # horizon -> its fixed functions

    def score(self, net, steps: int) -> float:
        """``net``'s selection score over runs of ``steps`` steps (in eval mode; shared out over the ranks)."""
        if steps not in self.problems:
            self.problems[steps] = held_out_problems(self.family, self.num_functions, steps, self.data_seed,
                                                     "validation", self.device, key="train.val_functions")
        problem = self.problems[steps]
        net.eval()
        try:
            if self.rank is None:
                return selection_score(self.family, problem, net, steps)
            return distributed_score(self.family, problem, net, steps, self.rank)
        finally:
            net.train()
