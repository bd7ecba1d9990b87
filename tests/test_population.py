"""train.population: independent members, the best on validation promoted to best.pt, per-member resume, and
resuming into another run directory (checkpoints carried over)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY_TRAIN, run_cli, spawned_children
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from l2l_cli.core.checkpoints import load_checkpoint
from l2l_cli.core.schemas import ConfigError
from l2l_cli.meta.policy import resolve_member_processes
from l2l_cli.meta.population import best_member

POPULATION = [*TINY_TRAIN, "train.population=2"]


def _models_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _model(path) -> dict:
    return load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    """root/single: the session's tiny run (TINY_TRAIN, read only); root/population: POPULATION with the same seed."""
    root = tmp_path_factory.mktemp("population")
    (root / "single").symlink_to(tiny_run[0] / "train")
    result = run_cli("train", *POPULATION, f"hydra.run.dir={root / 'population'}")
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_best_member_is_promoted_and_each_member_is_its_own_run(runs):
    pop = runs / "population"
    metrics = json.loads((pop / "metrics.json").read_text())
    scores = [m["val_best"] for m in metrics["members"]]
    assert len(scores) == 2 and scores[0] != scores[1]
    winner = scores.index(min(scores))
    assert metrics["best_member"] == winner and metrics["val_best"] == min(scores)
    best = load_checkpoint(pop / "checkpoints" / "best.pt")
    assert best["member"] == winner
    assert _models_equal(best["model"], _model(pop / "members" / str(winner) / "checkpoints" / "best.pt"))
    # member 0 is exactly the single run with the same seed; member 1 is a different meta-training
    single = _model(runs / "single" / "checkpoints" / "last.pt")
    assert _models_equal(_model(pop / "members" / "0" / "checkpoints" / "last.pt"), single)
    assert not _models_equal(_model(pop / "members" / "1" / "checkpoints" / "last.pt"), single)
    for k in range(2):  # each member's curves are a run of their own in TensorBoard
        events = EventAccumulator(str(pop / "tb" / f"member_{k}"))
        events.Reload()
        assert [e.step for e in events.Scalars("val/final_loss")] == [0, 3, 6]
        assert [e.value for e in events.Scalars("val/final_loss")] == [v for _, v in
                                                                       metrics["members"][k]["validation_history"]]


def test_population_resume_continues_every_member_exactly(runs, tmp_path):
    first = run_cli("train", *POPULATION, "train.iterations=3", f"hydra.run.dir={tmp_path}")
    assert first.returncode == 0, first.stderr
    # a resumed run keeps its recorded config (3 iterations); the command line extends it to the reference's 6
    resumed = run_cli("train", *POPULATION, "resume=true", "train.iterations=6", f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    out = " ".join(resumed.stdout.split())
    for k in range(2):
        assert f"member {k}: resumed from {tmp_path / 'members' / str(k) / 'checkpoints' / 'last.pt'} at iteration 3" \
            in out
        assert _models_equal(_model(tmp_path / "members" / str(k) / "checkpoints" / "last.pt"),
                             _model(runs / "population" / "members" / str(k) / "checkpoints" / "last.pt"))
    assert _models_equal(_model(tmp_path / "checkpoints" / "best.pt"),
                         _model(runs / "population" / "checkpoints" / "best.pt"))


def test_resume_into_another_run_dir_carries_the_checkpoints(runs, tmp_path):
    # nothing left to train: without the carried best.pt the new run would have none
    result = run_cli("train", *TINY_TRAIN, f"resume={runs / 'single'}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    for name in ("best.pt", "last.pt"):
        assert _models_equal(_model(tmp_path / "checkpoints" / name), _model(runs / "single" / "checkpoints" / name))


def test_population_resume_needs_a_run_directory(runs, tmp_path):
    result = run_cli("train", *POPULATION, f"resume={runs / 'single' / 'checkpoints' / 'last.pt'}",
                     f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"l2l: error: resume: with train.population=2 pass a run directory (its members resume together), got "
        f"{runs / 'single' / 'checkpoints' / 'last.pt'}"]


def test_a_diverged_member_never_wins():
    assert best_member([float("nan"), 0.5, float("inf"), 0.7]) == 1
    assert best_member([float("nan"), float("inf")]) == 0


SIDE_BY_SIDE = ["train.parallel_members=2", "threads=2"]  # two processes of one thread each


def test_members_side_by_side_train_and_resume_exactly_as_one_after_another(runs, tmp_path):
    """Each member in a process of its own (one thread, as the sequential run): the same checkpoints, curves and
    metrics, a resume included (3 iterations, then on to 6, side by side both times)."""
    first = run_cli("train", *POPULATION, *SIDE_BY_SIDE, "train.iterations=3", f"hydra.run.dir={tmp_path}")
    assert first.returncode == 0, first.stderr
    assert "meta-training 2 members in 2 processes side by side, 1 thread(s) each" in " ".join(first.stdout.split())
    resumed = run_cli("train", *POPULATION, *SIDE_BY_SIDE, "resume=true", "train.iterations=6",
                      f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    out = " ".join(resumed.stdout.split())
    reference = json.loads((runs / "population" / "metrics.json").read_text())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for k in range(2):
        assert f"member {k}: resumed from {tmp_path / 'members' / str(k) / 'checkpoints' / 'last.pt'} at " \
               "iteration 3" in out
        for name in ("best.pt", "last.pt"):
            assert _models_equal(_model(tmp_path / "members" / str(k) / "checkpoints" / name),
                                 _model(runs / "population" / "members" / str(k) / "checkpoints" / name))
        assert metrics["members"][k] == reference["members"][k]
        events = EventAccumulator(str(tmp_path / "tb" / f"member_{k}"))
        events.Reload()
        assert [e.step for e in events.Scalars("val/final_loss")] == [0, 3, 6]
    assert metrics["best_member"] == reference["best_member"]
    assert _models_equal(_model(tmp_path / "checkpoints" / "best.pt"),
                         _model(runs / "population" / "checkpoints" / "best.pt"))


def _start_population(run_dir, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    return subprocess.Popen([sys.executable, "-m", "l2l_cli", "train", *POPULATION, *SIDE_BY_SIDE,
                             "train.iterations=400", "train.val_every=100", "train.checkpoint_every=5", *extra,
                             f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_members(run_dir, proc, timeout=120):
    deadline = time.time() + timeout
    while not all((run_dir / "members" / str(k) / "checkpoints" / "last.pt").exists() for k in range(2)):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out waiting for the members' last.pt"
        time.sleep(0.02)


def test_ctrl_c_stops_members_side_by_side_with_their_last_checkpoints(tmp_path):
    proc = _start_population(tmp_path)
    _wait_for_members(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: every process of the group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert "every started member's last.pt is written" in stderr and "Traceback" not in stderr
    for k in range(2):
        assert 5 <= load_checkpoint(tmp_path / "members" / str(k) / "checkpoints" / "last.pt")["iteration"] < 400


def test_a_killed_member_process_is_one_line_naming_it(tmp_path):
    proc = _start_population(tmp_path)
    _wait_for_members(tmp_path, proc)
    members = spawned_children(proc.pid)
    assert len(members) == 2
    os.kill(members[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and "WARNING" not in line]
    assert lines == ["l2l: error: the process training population member(s) 1 exited unexpectedly (exit code -9)"]
    # the other member stopped after its iteration, its last.pt written
    assert load_checkpoint(tmp_path / "members" / "0" / "checkpoints" / "last.pt")["iteration"] >= 5


@pytest.mark.parametrize("setting, threads, population, workers, work, device, expected", [
    (None, 2, 2, 1, 1e9, torch.device("cpu"), 2),  # MNIST's default: a member per thread
    (None, 4, 3, 1, 1e9, torch.device("cpu"), 3),  # at most one per member
    (None, 2, 1, 1, 1e9, torch.device("cpu"), 1),  # one member: nothing to put side by side
    (None, 2, 2, 2, 1e9, torch.device("cpu"), 1),  # workers already share the threads
    (None, 1, 2, 1, 1e9, torch.device("cpu"), 1),  # one thread
    (None, 2, 2, 1, 1e3, torch.device("cpu"), 1),  # a run too short to repay the processes' start
    (None, 8, 2, 1, 1e9, torch.device("cuda"), 1),
    (2, 1, 2, 1, 1.0, torch.device("cpu"), 2),  # as set
])
def test_resolve_member_processes(setting, threads, population, workers, work, device, expected):
    assert resolve_member_processes(setting, threads, population, workers, work, device) == expected


@pytest.mark.parametrize("args, message", [
    ((3, 2, 2, 1, 1e9, torch.device("cpu")), "train.parallel_members: at most one process per member of "
                                             "train.population=2, got 3"),
    ((2, 2, 2, 2, 1e9, torch.device("cpu")), "train.parallel_members=2 and train.workers=2 would both split"),
    ((2, 2, 2, 1, 1e9, torch.device("cuda")), "train.parallel_members: the processes it starts run on the CPU; "
                                              "with device=cuda set train.parallel_members=1 or null, got 2"),
])
def test_resolve_member_processes_refuses_what_cannot_work(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_member_processes(*args)
