"""Runs never share, steal or silently inherit each other's state: unique run dirs, a lock held while a run lives,
strict resume that continues the recorded config, and failed writes that name their file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_TRAIN, run_cli

from l2l_cli.cli.run_dir_lock import LOCK, RunDirBusy, RunDirLock
from l2l_cli.core.checkpoints import load_checkpoint, save_checkpoint
from l2l_cli.core.environment import git_dirty
from l2l_cli.core.schemas import ConfigError
from l2l_cli.meta.population import find_resume

LONG = [*TINY_TRAIN, "train.iterations=100000", "train.val_every=100", "train.checkpoint_every=5"]


def _start(run_dir: Path, *args, cwd=ROOT):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "l2l_cli", "train", *args, f"hydra.run.dir={run_dir}"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"timed out waiting for {path}"
        time.sleep(0.02)


def test_two_runs_started_at_once_get_a_dir_each(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "l2l_cli", "train", *TINY_TRAIN, f"seed={seed}"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 2
    seeds = sorted(json.loads((run / "run.json").read_text())["seeds"]["seed"] for run in runs)
    assert seeds == [1, 2]
    for run in runs:
        assert load_checkpoint(run / "checkpoints" / "last.pt")["seed"] == json.loads(
            (run / "run.json").read_text())["seeds"]["seed"]
        assert not (run / LOCK).exists()  # released at the end


def test_a_live_run_holds_its_dir_and_a_dead_ones_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, *LONG)
    try:
        _wait_for(run_dir / "checkpoints" / "last.pt", proc)
        lock = json.loads((run_dir / LOCK).read_text())
        assert lock["pid"] == proc.pid and lock["command"] == "train"
        for command in ("train", "eval"):
            second = run_cli(command, *(TINY_TRAIN if command == "train" else []), f"hydra.run.dir={run_dir}")
            assert second.returncode == 2 and "Traceback" not in second.stderr
            assert (f"l2l: error: run dir {run_dir} is in use by another run: `l2l train` (pid {proc.pid} on "
                    f"{socket.gethostname()}") in second.stderr
        before = (run_dir / ".hydra" / "overrides.yaml").read_text()
        assert "train.iterations=100000" in before  # the refused processes wrote nothing into it
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert (run_dir / LOCK).exists()  # SIGKILL: the lock stays, its holder is gone
    end = load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] + 5
    resumed = run_cli("train", *LONG, f"train.iterations={end}", "resume=true", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == end
    assert not (run_dir / LOCK).exists()


def test_the_lock_tells_a_live_holder_from_a_reused_pid(tmp_path):
    lock = RunDirLock(tmp_path, "train").acquire()
    with pytest.raises(RunDirBusy, match=r"is in use by another run: `l2l train` \(pid \d+ on"):
        RunDirLock(tmp_path, "eval").acquire()
    record = json.loads((tmp_path / LOCK).read_text())
    (tmp_path / LOCK).write_text(json.dumps({**record, "process_start": "1"}))  # our pid, another process's start
    taken = RunDirLock(tmp_path, "eval").acquire()
    assert json.loads((tmp_path / LOCK).read_text())["command"] == "eval"
    taken.release()
    lock.release()
    assert not (tmp_path / LOCK).exists()


def _run_dir(root: Path, name: str, family: str, age: float) -> Path:
    run = root / name
    save_checkpoint({"iteration": 1}, run / "checkpoints" / "last.pt")
    (run / "run.json").write_text(json.dumps({"config": {"optimizee": {"name": family}, "train": {}}}))
    stamp = time.time() - age
    os.utime(run / "checkpoints" / "last.pt", (stamp, stamp))
    return run


def test_resume_true_is_strict(tmp_path, caplog):
    root = tmp_path / "outputs" / "train"
    old_quadratic = _run_dir(root, "2026-01-01_00-00-00-aaaa", "quadratic", 300)
    _run_dir(root, "2026-01-02_00-00-00-bbbb", "mnist", 100)  # newer, but another family
    (root.parent / "eval" / "2026-01-03_00-00-00-cccc" / "checkpoints").mkdir(parents=True)  # another command
    new = root / "2026-01-04_00-00-00-dddd"
    with caplog.at_level("INFO"):
        assert find_resume(True, new, False, "train", "quadratic") == old_quadratic
    assert f"continuing the newest earlier train run of optimizee=quadratic, {old_quadratic}" in caplog.text
    with pytest.raises(ConfigError, match=r"resume: true, but no earlier `l2l train` run of optimizee=custom"):
        find_resume(True, new, False, "train", "custom")
    with pytest.raises(ConfigError, match=r"resume: true with hydra.run.dir=.*dddd, but that run dir has no "
                                          r"checkpoints/last.pt"):
        find_resume(True, new, True, "train", "quadratic")
    assert find_resume(True, old_quadratic, True, "train", "quadratic") == old_quadratic
    assert find_resume(False, new, True, "train", "quadratic") is None


def test_resume_in_a_new_dir_without_a_checkpoint_fails_with_one_line(tmp_path):
    result = run_cli("train", *TINY_TRAIN, "resume=true", f"hydra.run.dir={tmp_path / 'new_dir'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"resume: true with hydra.run.dir={tmp_path / 'new_dir'}, but that run dir has no checkpoints/last.pt" \
        in result.stderr


def test_a_resumed_run_continues_its_recorded_config_and_extends_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli("train", *TINY_TRAIN, "train.meta_lr=0.01", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-2000:]
    first_environment = json.loads((run_dir / "run.json").read_text())["environment"]
    again = run_cli("train", *TINY_TRAIN, "resume=true", "train.iterations=9", "train.val_every=9", "threads=1",
                    f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-2000:]
    text = " ".join((again.stdout + again.stderr).split())
    assert "from this command line: train.iterations=9 (was 6), train.val_every=9 (was 3), threads=1 (was None)" \
        in text  # how it runs (threads, device, compile) may change on a resume too
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["train"]["meta_lr"] == 0.01 and config["train"]["iterations"] == 9  # recorded, then extended
    assert config["threads"] == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["iterations"] == 9 and [h[0] for h in metrics["validation_history"]] == [0, 3, 6, 9]
    # the run's command survives the resume: run.json and Hydra's overrides.yaml (which reports and `l2l pretrained
    # add` read) hold the first command with the resume's changes, run.json each resume's own command line
    record = json.loads((run_dir / "run.json").read_text())
    assert record["command"] == [*TINY_TRAIN, "train.meta_lr=0.01", "train.iterations=9", "train.val_every=9",
                                 "threads=1"]
    assert record["resumes"] == [[*TINY_TRAIN, "resume=true", "train.iterations=9", "train.val_every=9", "threads=1"]]
    assert record["earlier_environments"] == [first_environment]  # the commit it started at stays on record
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) == record["command"]
    hydra_record = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    for args, message in ((["optimizer.hidden_size=40"], "a resumed run keeps its architecture (got 40)"),
                          (["optimizee=mnist"], "meta-trained optimizee=quadratic; a resumed run cannot switch to "
                                                "optimizee=mnist"),
                          (["seed=3"], "has seed=0; a resumed run continues its random streams (got seed=3")):
        refused = run_cli("train", "debug=tiny", "resume=true", *args, f"hydra.run.dir={run_dir}")
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr
        # Hydra rewrote its record before l2l refused; the run's own is put back
        assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == hydra_record


def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    return path


def test_a_full_disk_names_the_file_and_the_last_good_checkpoint(tmp_path):
    disk = _tmpfs(tmp_path / "disk", "400k")
    try:
        # room for best.pt and last.pt once (75 KB each); the next best.pt finds the disk full
        (disk / "filler").write_bytes(b"\0" * 180 * 1024)
        run_dir = disk / "run"
        result = run_cli("train", *TINY_TRAIN, f"hydra.run.dir={run_dir}")
        assert result.returncode == 2, result.stderr[-2000:]
        lines = [line for line in result.stderr.splitlines() if line.startswith("l2l: error")]
        assert lines == [f"l2l: error: could not write {run_dir}/checkpoints/best.pt (No space left on device); the "
                         f"last good checkpoint is {run_dir}/checkpoints/last.pt (iteration 3): continue with "
                         f"resume={run_dir}"]
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no .tmp
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 3
        (disk / "filler").unlink()
        resumed = run_cli("train", *TINY_TRAIN, f"resume={run_dir}", f"hydra.run.dir={run_dir}")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 6
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_removed_checkpoint_dir_stops_the_run_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, *LONG)
    _wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGSTOP)  # else a checkpoint written meanwhile (its .tmp) makes the dir non-empty again
    for path in (run_dir / "checkpoints").iterdir():
        path.unlink()
    (run_dir / "checkpoints").rmdir()
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-2000:]
    assert f"l2l: error: could not write {run_dir}/checkpoints/last.pt (No such file or directory); the last " \
           f"checkpoint written, {run_dir}/checkpoints/last.pt (iteration" in stderr and "is gone too" in stderr
    assert not (run_dir / "checkpoints").exists()  # not quietly re-created


def test_ctrl_c_releases_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, *LONG)
    _wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT and not (run_dir / LOCK).exists()


def test_a_run_written_into_the_checkout_does_not_mark_the_code_changed(tmp_path):
    """git_dirty asks about the code a run ran: l2l's own outputs (runs/, outputs/, docs/results) changed in the
    checkout leave it clean, a changed source file does not."""
    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    for path in ("l2l_cli/core/code.py", "runs/r/run.json", "outputs/train/x.json", "docs/results/index.md",
                 "docs/guide.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("first\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "first")
    where = tmp_path / "l2l_cli" / "core"
    assert git_dirty(where) is False
    for path in ("runs/r/run.json", "outputs/train/x.json", "docs/results/index.md"):
        (tmp_path / path).write_text("a run's output\n")
    assert git_dirty(where) is False
    (tmp_path / "docs/guide.md").write_text("edited\n")
    assert git_dirty(where) is True
    git("checkout", "-q", "docs/guide.md")
    (tmp_path / "l2l_cli/core/code.py").write_text("edited\n")
    assert git_dirty(where) is True
