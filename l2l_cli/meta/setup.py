"""Everything a meta-training needs, as plain values (no config framework); ``policy.plan_training`` builds it with
the run's compile and worker decisions made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from l2l_cli.core.schemas import TrainLoopConfig
from l2l_cli.meta.estimators.tbptt import TBPTTConfig
from l2l_cli.optimizees.base import Family


@dataclass(frozen=True)
class TrainSetup:
    family: Family
    optimizer: object  # the learned optimizer's config dataclass
    schedule: object  # the schedule's config dataclass (``meta.schedules``)
    loop: TrainLoopConfig
    batch_size: int
    seed: int
    data_seed: int
    device: torch.device
    out_dir: Path
    estimator: object = field(default_factory=TBPTTConfig)  # the estimator's config (``meta.estimators``)
    optimizee: Optional[object] = None  # the optimizee config dataclass, recorded in checkpoints
    compile: bool = False
    member: int = 0  # index in a population of independent meta-trainings (0: the run's seed itself)
    # ranks sharing each batch's functions on this machine (policy.resolve_workers; meta.launch starts them); 1: this
    # process alone. A MetaTrainer itself is always one rank: ``rank`` says which.
    workers: int = 1
    # processes training the population's members side by side (policy.resolve_member_processes;
    # meta.parallel_members starts them); 1: one member after another in this process
    member_processes: int = 1
