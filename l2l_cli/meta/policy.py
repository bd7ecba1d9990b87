"""Run policy: from a run's size and this process's threads, whether to compile and how many worker processes to
use; the result is a final ``TrainSetup``."""

from __future__ import annotations

from pathlib import Path

import torch

from l2l_cli.meta.parallel import resolve_workers
from l2l_cli.meta.trainer import TrainSetup
from l2l_cli.optimizees.base import Family
from l2l_cli.optimizers.compiled import should_compile
from l2l_cli.schemas import TrainLoopConfig, TruncatedScheduleConfig


def coordinate_steps(batch_size: int, num_params: int, num_steps: int, iterations: int) -> float:
    """A meta-training run's work: functions x coordinates x optimizee steps x optimizee runs."""
    return float(batch_size) * num_params * num_steps * iterations


def plan_training(*, family: Family, optimizee, optimizer, schedule: TruncatedScheduleConfig, loop: TrainLoopConfig,
                  seed: int, data_seed: int, device: torch.device, out_dir: Path, compile: bool | None,
                  threads: int | None = None) -> TrainSetup:
    """The setup of a run: ``compile`` and ``loop.workers`` as set, or (null) decided from the run's work."""
    threads = threads or torch.get_num_threads()
    work = coordinate_steps(optimizee.batch_size, family.num_params, schedule.num_steps, loop.iterations)
    workers = resolve_workers(loop.workers, threads, optimizee.batch_size, family.num_params, work, device)
    return TrainSetup(family=family, optimizer=optimizer, schedule=schedule, loop=loop,
                      batch_size=optimizee.batch_size, seed=seed, data_seed=data_seed, device=device,
                      out_dir=out_dir, optimizee=optimizee, compile=should_compile(compile, work), workers=workers)
