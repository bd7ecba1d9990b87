"""Helpers shared by the commands: output dir, run records, job threads, metrics."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from l2l_cli.core.environment import environment_record
from l2l_cli.reporting.writers import write_json


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def record_run(cfg: DictConfig, out_dir: Path, command: list[str] | None = None,
               resumes: list[list[str]] | None = None) -> dict:
    """Write run.json (resolved config, versions, git commit, the command's overrides, and those of each resume)
    next to Hydra's own .hydra/ record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"config": OmegaConf.to_container(cfg, resolve=True),
              "seeds": {"seed": cfg.seed, "data_seed": cfg.data_seed}, "environment": environment_record(),
              **({"command": command} if command is not None else {}), **({"resumes": resumes} if resumes else {})}
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
