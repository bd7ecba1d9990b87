"""Where a run keeps its files: a population's members, their curves, and the run a checkpoint belongs to.

A population of 1 keeps the plain single-run layout; with train.population > 1:
  members/<k>/checkpoints/{best,last}.pt   each member's own checkpoints (resume continues every member)
  tb/member_<k>/                           each member's curves, overlaid by TensorBoard
  checkpoints/best.pt                      a copy of the best member's best.pt
"""

from __future__ import annotations

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


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a last.pt belongs to (a population member's: the population's run)."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    population = population_run_dir(checkpoint)
    return population if population is not None else run_dir
