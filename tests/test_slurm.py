"""Against a real SLURM cluster (tests/slurm/start.sh starts a one-node one on 127.0.0.1): sweeps as array jobs
through the submitit launcher, a failing job, and a meta-training distributed over two SLURM tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY_TRAIN, run_cli

from l2l_cli.core.checkpoints import load_checkpoint

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


PREEMPTABLE = [*TINY_TRAIN, "train.iterations=1500", "train.checkpoint_every=5", "train.val_every=500", "threads=1"]


def _interrupted_sweep(tmp_path, interrupt, *args):
    """A one-job sweep on the cluster, interrupted by ``interrupt(job_id)`` once it has checkpointed; returns the
    job dir after the sweep ended."""
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "l2l_cli", "train", "-m", *PREEMPTABLE, *SLURM, *args, "seed=0",
                             f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last = sweep_dir / "0" / "checkpoints" / "last.pt"
    deadline = time.time() + 180
    while not last.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    job = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True).stdout.split()[0]
    interrupt(job)
    # SLURM holds a requeued job back for a while before it may start again; let it start now
    deadline = time.time() + 60
    while time.time() < deadline:
        state = subprocess.run(["squeue", "--noheader", "--format=%t", f"--jobs={job}"], capture_output=True,
                               text=True).stdout.strip()
        if state == "PD":
            # slurmd refuses a launch whose credential dates from the same second as the revocation of the job's
            # previous one ("Job credential revoked"): let that second pass first
            time.sleep(2)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
            break
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return sweep_dir / "0"


def _uninterrupted(tmp_path) -> dict:
    straight = run_cli("train", *PREEMPTABLE, f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-2000:]
    return load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("how", ["scontrol requeue", "preemption signal"])
def test_a_requeued_job_resumes_where_it_stopped_and_ends_bit_identical(tmp_path, how):
    """`scontrol requeue` (SLURM sends SIGTERM, then requeues) and the signal submitit asks SLURM to send before a
    time limit or preemption (USR2: submitit requeues): last.pt at the end of the iteration, the requeued job resumes
    from it, and the run ends exactly where an uninterrupted one ends."""
    if how == "scontrol requeue":
        job_dir = _interrupted_sweep(tmp_path, lambda job: subprocess.run(["scontrol", "requeue", job], check=True))
    else:  # submitit counts a USR2 in the last 10 minutes of the limit as a time-out: a limit far away, a preemption
        job_dir = _interrupted_sweep(tmp_path, lambda job: subprocess.run(["scancel", "--signal=USR2", job],
                                                                           check=True), "hydra.launcher.timeout_min=60")
    log = (job_dir / "train.log").read_text()
    assert "finishing the current iteration, then writing last.pt" in log
    assert "requeued job (restart 1): resuming" in log
    assert json.loads((job_dir / "metrics.json").read_text())["iterations"] == 1500
    assert not (job_dir / "error.json").exists()
    ours, reference = load_checkpoint(job_dir / "checkpoints" / "last.pt")["model"], _uninterrupted(tmp_path)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
