"""Against a real SLURM cluster (tests/slurm/start.sh starts a one-node one on 127.0.0.1): sweeps as array jobs
through the submitit launcher, a failing job, and a meta-training distributed over two SLURM tasks."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_TRAIN, run_cli

from l2l_cli.meta.checkpoint import load_checkpoint

pytestmark = pytest.mark.slurm

# one CPU and 1 GB per task on the 2-CPU test node
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.timeout_min=10"]
TOY = [*TINY_TRAIN, "train.iterations=3"]


def _sweep(tmp_path, name, *args):
    sweep_dir = tmp_path / name
    result = run_cli("train", "-m", *TOY, *SLURM, *args, f"hydra.sweep.dir={sweep_dir}", timeout=600)
    summary = {row["job"]: row for row in json.loads((sweep_dir / "summary.json").read_text())} \
        if (sweep_dir / "summary.json").is_file() else {}
    return sweep_dir, result, summary


def test_a_two_job_sweep_runs_as_an_array_job(tmp_path):
    sweep_dir, result, summary = _sweep(tmp_path, "array", "seed=0,1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {job: row["status"] for job, row in summary.items()} == {"0": "ok", "1": "ok"}
    tasks = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(tasks) == 2 and len({name.split("_")[0] for name in tasks}) == 1  # <one array job id>_<task>
    for job in ("0", "1"):
        assert (sweep_dir / job / "checkpoints" / "best.pt").is_file()


def test_a_failing_job_is_listed_and_the_other_finishes(tmp_path):
    sweep_dir, result, summary = _sweep(tmp_path, "failing", "train.meta_lr=0.01,-1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["0"]["status"] == "ok" and summary["1"]["status"] == "failed"
    assert "train.meta_lr: must be a positive number, got -1.0" in summary["1"]["error"]


def test_a_meta_training_over_two_tasks_equals_one_process(tmp_path):
    single = run_cli("train", *TOY, f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-2000:]
    sweep_dir, result, summary = _sweep(tmp_path, "tasks", "seed=0", "hydra.launcher.tasks_per_node=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["0"]["status"] == "ok"
    assert "distributed meta-training: 2 ranks (gloo backend)" in (sweep_dir / "0" / "train.log").read_text()
    ours = load_checkpoint(sweep_dir / "0" / "checkpoints" / "last.pt")["model"]
    reference = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    difference = max(float((ours[k] - reference[k]).abs().max()) for k in reference)
    assert difference < 1e-6, difference
