"""Run policy: from a run's size and this process's threads, whether to compile and how many ranks to use on this
machine; the result is a final ``TrainSetup``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from l2l_cli.core.processes import process_count
from l2l_cli.core.registry import ESTIMATORS
from l2l_cli.core.schemas import ConfigError, TrainLoopConfig
from l2l_cli.meta.estimators.tbptt import TBPTTConfig
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.meta.setup import TrainSetup
from l2l_cli.optimizees.base import Family
from l2l_cli.optimizers.learned.compiled import should_compile

log = logging.getLogger(__name__)

# a rank's start (a fresh interpreter importing torch, then compiling) costs a few seconds; below this much work
# (functions x coordinates x steps x iterations) a run is over before that is repaid
AUTO_MIN_COORDINATE_STEPS = 2e7
# fewer coordinates than this per rank and each step is all per-call overhead
MIN_COORDINATES_PER_WORKER = 512


def resolve_workers(setting: int | None, threads: int, batch: int, num_params: int, work: float,
                    device: torch.device) -> int:
    """Ranks for a meta-training on this machine (train.workers): as set (checked), or for null (auto) one per
    thread when the run is long enough and each rank gets enough coordinates; 1 means this process alone."""
    if setting is not None:
        if setting > 1 and device.type != "cpu":
            raise ConfigError(f"train.workers: the ranks it starts run on the CPU; with device={device.type} set "
                              f"train.workers=1 or null, and start one rank per GPU with torchrun, got {setting}")
        if setting > batch:
            raise ConfigError(f"train.workers: each rank takes a share of optimizee.batch_size={batch} functions, "
                              f"so at most {batch}, got {setting}")
        return setting
    if device.type != "cpu" or threads < 2 or work < AUTO_MIN_COORDINATE_STEPS:
        return 1
    return max(1, min(threads, batch, batch * num_params // MIN_COORDINATES_PER_WORKER))


def resolve_member_processes(setting: int | None, threads: int, population: int, workers: int, work: float,
                             device: torch.device) -> int:
    """Processes training the population's members side by side (train.parallel_members): as set (checked), or for
    null (auto) one per thread, at most one per member, on the CPU for runs long enough to repay their start and
    whose functions are not already shared out over workers (the ranks take the threads then); 1: this process
    trains the members one after another."""
    if setting is not None and setting > 1 and workers > 1:
        raise ConfigError(f"train.parallel_members={setting} and train.workers={workers} would both split this "
                          "machine's threads; set one of them to 1")
    return process_count(setting, "train.parallel_members", population, f"member of train.population={population}",
                         threads, device, auto=workers == 1 and work >= AUTO_MIN_COORDINATE_STEPS)


def coordinate_steps(batch_size: int, num_params: int, num_steps: int, iterations: int) -> float:
    """A meta-training run's work: functions x coordinates x optimizee steps x optimizee runs."""
    return float(batch_size) * num_params * num_steps * iterations


def plan_training(*, family: Family, optimizee, optimizer, schedule: TruncatedScheduleConfig, loop: TrainLoopConfig,
                  seed: int, data_seed: int, device: torch.device, out_dir: Path, compile: bool | None,
                  threads: int | None = None, estimator=None) -> TrainSetup:
    """The setup of a run: ``compile``, ``loop.workers`` and ``loop.parallel_members`` as set, or (null) decided
    from the run's work."""
    threads = threads or torch.get_num_threads()
    work = coordinate_steps(optimizee.batch_size, family.num_params, schedule.num_steps, loop.iterations)
    workers = resolve_workers(loop.workers, threads, optimizee.batch_size, family.num_params, work, device)
    member_processes = resolve_member_processes(loop.parallel_members, threads, loop.population, workers, work,
                                                device)
    estimator = estimator or TBPTTConfig()
    if not ESTIMATORS.get(estimator.name).build.compiles:
        # es / pes step all perturbed copies in one vmapped call of the eager module
        if compile:
            log.warning("compile=true applies to estimators that backpropagate; estimator=%s runs eagerly",
                        estimator.name)
        compile = False
    return TrainSetup(family=family, optimizer=optimizer, schedule=schedule, loop=loop, estimator=estimator,
                      batch_size=optimizee.batch_size, seed=seed, data_seed=data_seed, device=device,
                      out_dir=out_dir, optimizee=optimizee, compile=should_compile(compile, work), workers=workers,
                      member_processes=member_processes)
