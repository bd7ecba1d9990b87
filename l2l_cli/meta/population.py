"""A population: several independent meta-trainings in one run, the best on validation kept as the run's best.pt.

Meta-training a learned optimizer lands in optima of very different quality from seed to seed (measured on MNIST:
validation losses settling at 0.035-0.04 for one seed and 0.07-0.09 for another, both curves smooth), and validation
tells such members apart, so training a few and keeping the best beats tuned baselines more often than one long
meta-training of the same total length (docs/results.md). Members train one after another in this process, or side
by side in processes of their own (``meta.parallel_members``, train.parallel_members).

Layout of a run with train.population > 1 (a population of 1 keeps the plain single-run layout):
  members/<k>/checkpoints/{best,last}.pt   each member's own checkpoints (resume continues every member)
  tb/member_<k>/                           each member's curves, overlaid by TensorBoard
  checkpoints/best.pt                      a copy of the best member's best.pt
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional

from l2l_cli.core.checkpoints import copy_checkpoint, load_checkpoint
from l2l_cli.core.environment import release_freed_memory
from l2l_cli.core.run_layout import FIRST_MEMBER_LAST, member_dir, member_tb_dir, population_run_dir
from l2l_cli.core.schemas import ConfigError
from l2l_cli.core.user_files import UserFileError, lookup, read_json
from l2l_cli.meta.distributed import Rank
from l2l_cli.meta.setup import TrainSetup
from l2l_cli.meta.trainer import MetaTrainer

log = logging.getLogger("l2l.train")

def best_member(best_scores: list) -> int:
    """Index of the lowest validation score; non-finite scores (a diverged member) never win over finite ones."""
    finite = [(score, k) for k, score in enumerate(best_scores) if math.isfinite(score)]
    return min(finite)[1] if finite else 0


def last_checkpoint_of(run_dir: Path) -> Path | None:
    """The last.pt a resume of ``run_dir`` starts from (a population's: its first member's), None without one."""
    for last in ("checkpoints/last.pt", FIRST_MEMBER_LAST):
        if (run_dir / last).is_file():
            return run_dir / last
    return None


def find_resume(resume, out_dir: Path, explicit_dir: bool, command: str, family: str) -> Path | None:
    """The run directory (or .pt) that `resume` names, strictly: ``true`` with the run dir given on the command line
    (``explicit_dir``) resumes that dir or fails; ``true`` without one takes the newest earlier run of the same
    command and family under this command's output root (``out_dir.parent``) and says which; a path is that run dir
    or file. None: start fresh."""
    if resume is False or resume is None:
        return None
    if resume is not True:
        path = Path(str(resume)).expanduser()
        if not (path.is_file() or (path.is_dir() and last_checkpoint_of(path) is not None)):
            raise ConfigError(f"resume: no checkpoint at {path} (a run dir with checkpoints/last.pt, or a .pt file)")
        return path
    if explicit_dir:
        if last_checkpoint_of(out_dir) is None:
            raise ConfigError(f"resume: true with hydra.run.dir={out_dir}, but that run dir has no checkpoints/last.pt"
                              f"; give resume=PATH, or leave hydra.run.dir out to resume the newest {family} run")
        return out_dir
    root = out_dir.parent
    candidates = []
    for record in root.glob("*/run.json"):
        run_dir = record.parent
        last = last_checkpoint_of(run_dir)
        if run_dir == out_dir or last is None:
            continue
        try:
            config = read_json(record)
        except UserFileError as exc:  # not a run this resume can continue; the others still are
            log.warning("resume: true: %s; skipped", exc)
            continue
        if lookup(config, "config.optimizee.name", str) == family and lookup(config, "config.train", dict) is not None:
            candidates.append((last.stat().st_mtime, run_dir))
    if not candidates:
        raise ConfigError(f"resume: true, but no earlier `l2l {command}` run of optimizee={family} with a "
                          f"checkpoint under {root}; give resume=PATH or hydra.run.dir=<that run's dir>")
    chosen = max(candidates)[1]
    log.info("resume: true: continuing the newest earlier %s run of optimizee=%s, %s", command, family, chosen)
    return chosen


def resolve_resume(resume, out_dir: Path, last: str = "checkpoints/last.pt") -> Path | None:
    """false -> None; true -> this run dir's ``last`` file; a path -> that file, or <dir>/``last``. (A population
    run's ``last`` is its first member's last.pt; `l2l train` turns resume=true into a path with find_resume.)"""
    if resume is False or resume is None:
        return None
    path = out_dir if resume is True else Path(str(resume))
    if path.is_dir():
        path = path / last
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint at {path}")
    return path


def member_resume_files(resume, out_dir: Path, population: int) -> list[Path | None]:
    """Each member's last.pt to resume from (None: the member starts fresh)."""
    if population == 1:
        return [resolve_resume(resume, out_dir)]
    first = resolve_resume(resume, out_dir, FIRST_MEMBER_LAST)
    if first is None:
        return [None] * population
    run_dir = population_run_dir(first)
    if run_dir is None:
        raise ConfigError(f"resume: with train.population={population} pass a run directory (its members resume "
                          f"together), got {first}")
    files = [member_dir(run_dir, k, population) / "checkpoints" / "last.pt" for k in range(population)]
    return [path if path.is_file() else None for path in files]


@dataclass
class MemberResult:
    """What a member's meta-training left: its progress and validation record (read by `l2l train`'s report and
    progress bar, whichever process trained it)."""

    iteration: int
    best_val: float
    best_iteration: int
    history: list  # (iteration, validation score)
    skipped_total: int
    patience_over: bool
    checkpoint_dir: Path

    @classmethod
    def of(cls, trainer: MetaTrainer) -> MemberResult:
        return cls(trainer.iteration, trainer.best_val, trainer.best_iteration, list(trainer.history),
                   trainer.skipped_total, trainer.patience_over, trainer.checkpoint_dir)


@dataclass
class PopulationResult:
    members: List[MemberResult]
    winner: int  # index of the member with the best validation score
    best_path: Path  # the run's best.pt


def member_name(k: int, population: int) -> str:
    return "" if population == 1 else f"member {k}: "


def train_member(setup: TrainSetup, k: int, population: int, resume_from: Optional[Path], *,
                 writer_for: Optional[Callable[[Path], object]] = None,
                 on_start: Optional[Callable[[int, object], None]] = None,
                 on_iteration: Optional[Callable[[int, object, object], None]] = None,
                 should_stop: Callable[[], int] = lambda: 0, rank: Optional[Rank] = None) -> MemberResult:
    """Meta-train member ``k`` (resumed from ``resume_from`` where given) in this process; the callbacks as
    train_population's."""
    run_dir = setup.out_dir
    name = member_name(k, population)
    writes = rank is None or rank.writes
    writer = writer_for(member_tb_dir(run_dir, k, population)) if writes and writer_for is not None else None
    try:
        trainer = MetaTrainer(replace(setup, member=k, out_dir=member_dir(run_dir, k, population)), writer, rank)
        if resume_from is not None:
            trainer.restore(load_checkpoint(resume_from), resume_from)
            log.info("%sresumed from %s at iteration %d (best validation loss %.4g)", name, resume_from,
                     trainer.iteration, trainer.best_val)
        elif setup.loop.init is not None:  # a resumed run has its own weights
            trainer.start_from(load_checkpoint(setup.loop.init), setup.loop.init)
            log.info("%sstarting from the learned optimizer in %s", name, setup.loop.init)
        if on_start:
            on_start(k, trainer)
        trainer.fit(None if on_iteration is None else (lambda t, stats: on_iteration(k, t, stats)),
                    should_stop=should_stop)
    finally:
        if writer is not None:
            writer.close()
    result = MemberResult.of(trainer)
    del trainer
    release_freed_memory()
    return result


def report_member(k: int, population: int, member: MemberResult) -> None:
    log.info("%sbest validation loss %.4g at iteration %d; checkpoints in %s", member_name(k, population),
             member.best_val, member.best_iteration, member.checkpoint_dir)


def population_result(members: List[MemberResult], run_dir: Path, writes: bool) -> PopulationResult:
    """The best member's best.pt becomes the run's (a population's: copied to <run>/checkpoints/best.pt)."""
    winner = best_member([m.best_val for m in members])
    best_path = members[winner].checkpoint_dir / "best.pt"
    if len(members) > 1 and writes:
        best_path = copy_checkpoint(best_path, run_dir / "checkpoints" / "best.pt")  # it records its member index
        log.info("member %d is best (validation loss %.4g); its best.pt is %s", winner, members[winner].best_val,
                 best_path)
    return PopulationResult(members, winner, best_path)


def train_population(setup: TrainSetup, population: int, resume=False, *,
                     writer_for: Optional[Callable[[Path], object]] = None,
                     on_start: Optional[Callable[[int, object], None]] = None,
                     on_iteration: Optional[Callable[[int, object, object], None]] = None,
                     should_stop: Callable[[], int] = lambda: 0, rank: Optional[Rank] = None) -> PopulationResult:
    """Meta-train every member of the population, one after another in this process, each resumed from its last.pt
    where ``resume`` finds one; the best member's best.pt becomes the run's. ``writer_for(dir)``: a scalar writer
    for a member's curves (or None); ``on_start(k, trainer)`` / ``on_iteration(k, trainer, stats)``: progress.
    ``rank``: this process's place in a distributed run (every rank calls this; rank 0 alone writes)."""
    members = []
    for k, resume_from in enumerate(member_resume_files(resume, setup.out_dir, population)):
        members.append(train_member(setup, k, population, resume_from, writer_for=writer_for, on_start=on_start,
                                    on_iteration=on_iteration, should_stop=should_stop, rank=rank))
        report_member(k, population, members[-1])
    return population_result(members, setup.out_dir, rank is None or rank.writes)
