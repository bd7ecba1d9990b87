"""Helpers shared by the commands: output dir, run records, resume lookup."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from l2l_cli.config import ConfigError
from l2l_cli.runtime import environment_record


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def record_run(cfg: DictConfig, out_dir: Path) -> dict:
    """Write run.json (resolved config, versions, git commit) next to Hydra's own .hydra/ record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"config": OmegaConf.to_container(cfg, resolve=True),
              "seeds": {"seed": cfg.seed, "data_seed": cfg.data_seed}, "environment": environment_record()}
    (out_dir / "run.json").write_text(json.dumps(record, indent=2))
    return record


def resolve_resume(resume, out_dir: Path, last: str = "checkpoints/last.pt") -> Path | None:
    """false -> None; true -> this run dir's ``last`` file, else the newest run beside it that has one; a path ->
    that file, or <dir>/``last``. (A population run's ``last`` is its first member's last.pt.)"""
    if resume is False or resume is None:
        return None
    if resume is True:
        candidates = [out_dir / last]
        siblings = sorted((p for p in out_dir.parent.glob(f"*/{last}") if out_dir not in p.parents),
                          key=lambda p: p.stat().st_mtime, reverse=True)
        for path in candidates + siblings:
            if path.is_file():
                return path
        raise ConfigError(f"resume: true, but no {last} in {out_dir} or beside it; "
                          "pass resume=PATH (a run dir or a .pt file)")
    path = Path(str(resume))
    if path.is_dir():
        path = path / last
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint at {path}")
    return path


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
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
