"""A population: several independent meta-trainings in one run, the best on validation kept as the run's best.pt.

Meta-training a learned optimizer lands in optima of very different quality from seed to seed (measured on MNIST:
validation losses settling at 0.035-0.04 for one seed and 0.07-0.09 for another, both curves smooth), and validation
tells such members apart, so training a few and keeping the best beats tuned baselines more often than one long
meta-training of the same total length (README, "Results").

Layout of a run with train.population > 1 (a population of 1 keeps the plain single-run layout):
  members/<k>/checkpoints/{best,last}.pt   each member's own checkpoints (resume continues every member)
  tb/member_<k>/                           each member's curves, overlaid by TensorBoard
  checkpoints/best.pt                      a copy of the best member's best.pt
"""

from __future__ import annotations

import math
from pathlib import Path

FIRST_MEMBER_LAST = "members/0/checkpoints/last.pt"  # where `resume` looks for a population run


def member_dir(run_dir: Path, member: int, population: int) -> Path:
    return run_dir if population == 1 else run_dir / "members" / str(member)


def member_tb_dir(run_dir: Path, member: int, population: int) -> Path:
    return run_dir / "tb" if population == 1 else run_dir / "tb" / f"member_{member}"


def population_run_dir(first_member_last: Path) -> Path | None:
    """The run directory whose first member's last.pt this is, or None when the file is not in that layout."""
    run_dir = first_member_last.parents[3] if len(first_member_last.parents) > 3 else None
    return run_dir if run_dir is not None and first_member_last == run_dir / FIRST_MEMBER_LAST else None


def best_member(best_scores: list) -> int:
    """Index of the lowest validation score; non-finite scores (a diverged member) never win over finite ones."""
    finite = [(score, k) for k, score in enumerate(best_scores) if math.isfinite(score)]
    return min(finite)[1] if finite else 0
