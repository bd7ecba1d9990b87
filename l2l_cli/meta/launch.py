"""Where a meta-training runs: this process alone, or torch.distributed ranks (launched by torchrun, by a SLURM job
step with several tasks, or started here for `train.workers=N`). Every path trains the same population on the same
functions; the result differs only by float rounding."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, replace
from typing import Optional

import torch

from l2l_cli.core.environment import torch_threads
from l2l_cli.core.schemas import ConfigError
from l2l_cli.meta.distributed import (
    DistributedError,
    LocalRanks,
    Rank,
    close_group,
    init_group,
    join_group,
    leave_together,
    report_failure,
)
from l2l_cli.meta.parallel_members import train_side_by_side
from l2l_cli.meta.population import PopulationResult, train_population
from l2l_cli.meta.setup import TrainSetup
from l2l_cli.meta.stopping import StopRequested

log = logging.getLogger("l2l.train")


@dataclass
class TrainingResult:
    population: PopulationResult
    rank: Optional[Rank]  # this process's rank when launched as one of several (torchrun, SLURM); None otherwise

    @property
    def writes(self) -> bool:
        return self.rank is None or self.rank.writes


@contextlib.contextmanager
def pinned(cpus):
    """This process on ``cpus`` for a block (None: unchanged), its affinity restored after."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_training(setup: TrainSetup, population: int, resume=False, rank: Optional[Rank] = None,
                 **callbacks) -> TrainingResult:
    """Train the population as one of a launched group (``rank``: from ``distributed.from_environment``, the group
    joined and ``setup.out_dir`` rank 0's, as `l2l train` does), on local ranks (``setup.workers`` > 1), its members
    in processes side by side (``setup.member_processes`` > 1), or in this process. ``callbacks``:
    train_population's writer_for, on_start, on_iteration, should_stop (used by the process that writes)."""
    if rank is not None:
        return TrainingResult(_as_launched_rank(setup, population, resume, rank, callbacks), rank)
    if setup.workers > 1:
        return TrainingResult(_with_local_ranks(setup, population, resume, callbacks), None)
    if setup.member_processes > 1:
        return TrainingResult(train_side_by_side(setup, population, resume, **callbacks), None)
    return TrainingResult(train_population(setup, population, resume, **callbacks), None)


def _as_launched_rank(setup: TrainSetup, population: int, resume, rank: Rank, callbacks: dict) -> PopulationResult:
    """One rank of torchrun or a SLURM job step: the launcher started the others."""
    if setup.loop.workers not in (None, 1, rank.world):
        raise ConfigError(f"train.workers: this process is rank {rank.rank} of {rank.world} started by torchrun or "
                          f"SLURM; leave train.workers null (or {rank.world}), got {setup.loop.workers}")
    if setup.loop.parallel_members not in (None, 1):
        raise ConfigError(f"train.parallel_members: this process is rank {rank.rank} of {rank.world} started by "
                          f"torchrun or SLURM, which trains the members one after another; leave it null (or 1), "
                          f"got {setup.loop.parallel_members}")
    if rank.world > setup.batch_size:
        raise ConfigError(f"optimizee.batch_size: each of the {rank.world} ranks runs a share of the batch's "
                          f"functions, so at least {rank.world}, got {setup.batch_size}")
    setup = replace(setup, device=join_group(rank, setup.device, setup.loop.dist_timeout), workers=1,
                    member_processes=1)
    if rank.writes:
        log.info("distributed meta-training: %d ranks (%s backend); rank 0 writes", rank.world,
                 torch.distributed.get_backend())
    else:  # the others train quietly
        callbacks = {"should_stop": callbacks.get("should_stop", lambda: 0)}
    return _train_as_rank(setup, population, resume, rank, callbacks)


def _train_as_rank(setup: TrainSetup, population: int, resume, rank: Rank, callbacks: dict) -> PopulationResult:
    """train_population in a joined group: a failure is left in the store for the other ranks; the group is left
    at the end either way."""
    try:
        result = train_population(setup, population, resume, rank=rank, **callbacks)
        leave_together()
        return result
    except StopRequested:
        raise
    except BaseException as exc:
        report_failure(rank, exc)
        raise
    finally:
        close_group()


def _with_local_ranks(setup: TrainSetup, population: int, resume, callbacks: dict) -> PopulationResult:
    """train.workers=N on this machine: N ranks, this process rank 0, each with its share of the threads."""
    world = setup.workers
    threads = max(1, torch.get_num_threads() // world)
    ranks_setup = replace(setup, workers=1)
    local = LocalRanks(world, threads, _follow, (ranks_setup, population, resume), setup.loop.dist_timeout)
    rank = Rank(0, world, 0)
    log.info("meta-training on %d ranks (torch.distributed, gloo), %d thread(s) each%s", world, threads,
             ", pinned to cores" if local.pin else "")
    failed = True
    with torch_threads(threads), pinned(local.own_cpus):
        try:
            init_group(rank, setup.device, setup.loop.dist_timeout)
            result = _train_as_rank(ranks_setup, population, resume, rank, callbacks)
            failed = False
            return result
        except DistributedError as exc:
            if exc.rank is None:
                local.check()  # a rank that died without a word: name it
            raise
        except StopRequested:
            failed = False  # the ranks agreed to stop: they end by themselves
            raise
        finally:
            local.join(timeout=30 if not failed else 3)  # a hung rank is not waited for long


def _follow(rank: Rank, stopper, setup: TrainSetup, population: int, resume) -> None:
    """A local rank > 0: the same population, quietly; a stop the ranks agreed on ends it normally."""
    try:
        train_population(setup, population, resume, rank=rank, should_stop=stopper.stop)
        leave_together()
    except StopRequested:
        pass
