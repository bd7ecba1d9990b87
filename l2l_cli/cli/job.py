"""Helpers shared by the commands: output dir, run records, job threads, metrics."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from l2l_cli.core.environment import environment_record
from l2l_cli.reporting.writers import write_json


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@dataclass
class RunHistory:
    """What run.json keeps of a run's earlier segments: the overrides that rebuild its config, each resume's
    command line, and the environment (commit, versions) each earlier segment ran in, oldest first."""
    command: list[str] | None = None
    resumes: list[list[str]] = field(default_factory=list)
    earlier_environments: list[dict] = field(default_factory=list)
    started_from: dict | None = None  # train.init: the checkpoint the run started from (as given, file, SHA-256)


def record_run(cfg: DictConfig, out_dir: Path, history: RunHistory | None = None) -> dict:
    """Write run.json (resolved config, versions, git commit, the command's overrides, and, for a resumed run, each
    resume's overrides and the earlier segments' environments) next to Hydra's own .hydra/ record."""
    history = history or RunHistory()
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"config": OmegaConf.to_container(cfg, resolve=True),
              "seeds": {"seed": cfg.seed, "data_seed": cfg.data_seed}, "environment": environment_record(),
              **({"command": history.command} if history.command is not None else {}),
              **({"resumes": history.resumes} if history.resumes else {}),
              **({"earlier_environments": history.earlier_environments} if history.earlier_environments else {}),
              **({"started_from": history.started_from} if history.started_from else {})}
    write_json(out_dir / "run.json", record)
    return record


def job_threads(configured: int | None) -> int | None:
    """torch threads for this job: the configured value, else a fair share of the cores when a launcher runs
    several jobs at once on this machine (oversubscribed threads make each job many times slower)."""
    if configured is not None:
        return configured
    try:
        launcher = HydraConfig.get().launcher
    except ValueError:
        return None
    target = str(launcher.get("_target_", ""))
    cores = os.cpu_count() or 1
    if "JoblibLauncher" in target:
        n_jobs = launcher.get("n_jobs") or -1
        workers = cores if n_jobs < 0 else n_jobs
        return max(1, cores // max(1, workers))
    if "submitit_launcher" in target:
        # a cluster gives each task its cpus; the local executor starts every job at once, so one thread each
        return launcher.get("cpus_per_task") or (1 if "LocalLauncher" in target else None)
    return None


def write_metrics(out_dir: Path, metrics: dict) -> None:
    """metrics.json: what a sweep summary and `l2l plot` read back for each job."""
    write_json(out_dir / "metrics.json", metrics)
