"""Interrupted, diverging and malformed runs: real signals, broken checkpoints, forced NaN, bad command lines."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_EVAL, TINY_TRAIN, run_cli, spawned_children
from test_meta import _setup

from l2l_cli.core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from l2l_cli.evaluation.comparison import curve_stats
from l2l_cli.meta.stopping import DivergenceError
from l2l_cli.meta.trainer import MetaTrainer

# long enough that a signal sent once the first checkpoint (iteration 5) exists arrives mid-run
LONG = [*TINY_TRAIN, "train.iterations=150", "train.val_every=50", "train.checkpoint_every=5"]


def _start_train(run_dir: Path, *extra, new_session=False):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "l2l_cli", "train", *LONG, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=new_session)


def _wait_for(path: Path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out waiting for " + str(path)
        time.sleep(0.02)


def _final_model(run_dir: Path):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    result = run_cli("train", *LONG, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_last_checkpoint_and_resume_matches_uninterrupted(tmp_path, uninterrupted, sig):
    proc = _start_train(tmp_path)
    _wait_for(tmp_path / "checkpoints" / "last.pt", proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert "last checkpoint written to" in stderr and "Traceback" not in stderr
    stopped_at = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["iteration"]
    assert 5 <= stopped_at < 150
    resumed = run_cli("train", *LONG, "resume=true", f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {tmp_path / 'checkpoints' / 'last.pt'} at iteration {stopped_at}" in " ".join(
        resumed.stdout.split())
    final, reference = _final_model(tmp_path), _final_model(uninterrupted)
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_ctrl_c_to_the_process_group_with_workers_stops_cleanly_and_resumes_exactly(tmp_path):
    """A terminal's Ctrl-C reaches the worker processes too: they leave it to the main process, which finishes its
    iteration, checkpoints and stops; resuming (with workers again) ends where the uninterrupted run ends."""
    workers = ["train.workers=2", "threads=2"]
    straight = run_cli("train", *LONG, *workers, f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr
    proc = _start_train(tmp_path / "run", *workers, new_session=True)
    _wait_for(tmp_path / "run" / "checkpoints" / "last.pt", proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert "last checkpoint written to" in stderr and "Traceback" not in stderr and "WorkerError" not in stderr
    stopped_at = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"]
    assert 5 <= stopped_at < 150
    resumed = run_cli("train", *LONG, *workers, "resume=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert resumed.returncode == 0, resumed.stderr
    final, reference = _final_model(tmp_path / "run"), _final_model(tmp_path / "straight")
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_sigkill_never_leaves_a_partial_checkpoint(tmp_path):
    proc = _start_train(tmp_path)
    path = tmp_path / "checkpoints" / "last.pt"
    _wait_for(path, proc)
    time.sleep(0.3)
    proc.kill()
    proc.communicate(timeout=60)
    payload = load_checkpoint(path)  # loads: the rename is atomic, a kill mid-write leaves only a .tmp file
    assert payload["iteration"] % 5 == 0
    resumed = run_cli("train", *LONG, "train.iterations=" + str(payload["iteration"] + 5), f"resume={tmp_path}",
                      f"hydra.run.dir={tmp_path / 'again'}")
    assert resumed.returncode == 0, resumed.stderr


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _valid_checkpoint(tmp_path) -> Path:
    trainer = MetaTrainer(_setup(tmp_path, iterations=1))
    return trainer.save("last.pt")


@pytest.mark.parametrize("breakage, message", [
    ("truncated", "unreadable"),
    ("garbage", "unreadable"),
    ("pickled object", "pickled Python objects"),
    ("foreign", "not an l2l checkpoint"),
    ("future version", "format version 99"),
    ("missing", "no such file"),
])
def test_broken_checkpoints_fail_with_one_line(tmp_path, breakage, message):
    path = _valid_checkpoint(tmp_path)
    if breakage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif breakage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif breakage == "pickled object":
        torch.save({"format": "l2l-checkpoint", "format_version": 1, "model": Evil()}, path)
    elif breakage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif breakage == "future version":
        payload = torch.load(path, weights_only=True)
        payload["format_version"] = 99
        torch.save(payload, path)
    elif breakage == "missing":
        path.unlink()
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    result = run_cli("eval", "optimizee.dim=6", f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert "pwned" not in result.stdout


def test_architecture_mismatch_names_both_values(tmp_path):
    path = _valid_checkpoint(tmp_path)  # hidden_size=8
    result = run_cli("eval", "optimizee.dim=6", f"checkpoint={path}", "optimizer.hidden_size=40",
                     f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 2
    assert "trained with hidden_size=8, config asks for optimizer.hidden_size=40" in result.stderr


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = save_checkpoint({"x": torch.ones(2)}, tmp_path / "c.pt")
    before = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"x": torch.zeros(2)}, path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_forced_nan_never_reaches_the_parameters(tmp_path):
    setup = _setup(tmp_path, iterations=3, max_nonfinite=4)
    trainer = MetaTrainer(setup)
    family = setup.family
    clean = family.analytic_loss_and_grad
    family.analytic_loss_and_grad = lambda p, theta, step: tuple(x * math.nan for x in clean(p, theta, step))
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    stats = trainer.train_iteration()
    assert stats.skipped_updates == 4 and stats.updates == 0  # 20 steps / unroll 5
    assert all(torch.equal(before[k], v) for k, v in trainer.net.state_dict().items())
    with pytest.raises(DivergenceError, match="lower train.meta_lr"):
        trainer.fit()
    assert all(torch.equal(before[k], v) for k, v in trainer.net.state_dict().items())
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in saved.values())
    family.analytic_loss_and_grad = clean
    trainer.guard.in_row = 0
    trainer.fit()  # recovers once the losses are finite again
    assert trainer.skipped_total == 4 and trainer.iteration == 3


def test_evaluation_counts_nonfinite_runs_instead_of_averaging_them():
    losses = torch.tensor([[1.0, 1.0, 1.0], [0.5, math.inf, 0.1], [0.25, math.nan, 0.05]])
    stats = curve_stats(losses)
    assert stats.nonfinite == 1 and stats.runs == 3
    assert stats.mean[-1] == pytest.approx(0.15) and all(math.isfinite(v) for v in stats.mean)
    # the geometric mean's log: (log10 0.25 + log10 0.05) / 2, over the same finite runs
    assert stats.final_mean_log10 == pytest.approx((math.log10(0.25) + math.log10(0.05)) / 2)
    assert curve_stats(torch.tensor([[1.0, 1.0], [0.0, 1e-4]])).final_mean_log10 == pytest.approx((-30 - 4) / 2)


def test_diverging_baseline_is_reported_in_eval(tmp_path):
    path = _valid_checkpoint(tmp_path)
    result = run_cli("eval", "optimizee.dim=6", f"checkpoint={path}", "eval.num_functions=16",
                     "eval.val_functions=8", "eval.baselines=[sgd]", "eval.lr_grid=[1000.0]",
                     f"hydra.run.dir={tmp_path / 'eval'}", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    import json

    sgd = json.loads((tmp_path / "eval" / "results.json").read_text())["optimizers"]["sgd"]
    assert sgd["nonfinite"] == 16 and sgd["runs"] == 16
    assert "16/16" in result.stdout


def test_same_seed_gives_bit_identical_checkpoints_and_results(tmp_path, tiny_run):
    """A second run of the session's tiny train and eval (conftest.tiny_run), same command line: the same bytes."""
    root, _, _ = tiny_run
    train = run_cli("train", *TINY_TRAIN, f"hydra.run.dir={tmp_path / 'train'}")
    assert train.returncode == 0, train.stderr
    evaluate = run_cli("eval", *TINY_EVAL, f"checkpoint={root / 'train' / 'checkpoints' / 'best.pt'}",
                       f"hydra.run.dir={tmp_path / 'eval'}")
    assert evaluate.returncode == 0, evaluate.stderr
    for name in ("train/checkpoints/best.pt", "train/checkpoints/last.pt", "eval/results.json"):
        assert (tmp_path / name).read_bytes() == (root / name).read_bytes(), name
    import json

    record = json.loads((tmp_path / "train" / "run.json").read_text())
    assert record["seeds"] == {"seed": 0, "data_seed": 0}
    assert record["environment"]["packages"]["torch"] and "git_commit" in record["environment"]


VARIANTS = ["optimizee.dim=4", "eval.val_functions=16", "eval.lr_grid=[0.01,0.1,1.0]"]


def test_variants_side_by_side_equal_one_after_another(tiny_run, tmp_path):
    """Variant b outlasts the others: the process that has no variant left hands its core on to b's."""
    checkpoint = tiny_run[0] / "train" / "checkpoints" / "best.pt"
    study = ["eval", f"checkpoint={checkpoint}", *VARIANTS, "eval.num_functions=32", "+eval.variants.a.num_steps=8",
             "+eval.variants.b.num_steps=1500", "+eval.variants.c.num_steps=4"]
    side = run_cli(*study, "threads=2", "eval.parallel_variants=2", f"hydra.run.dir={tmp_path / 'side'}")
    assert side.returncode == 0, side.stderr
    out = " ".join(side.stdout.split())
    assert "evaluating 3 variants in 2 processes side by side" in out
    assert "variant b: took over the cores of finished processes, now 2 threads" in out
    one = run_cli(*study, f"hydra.run.dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    csv = [(tmp_path / run / "generalization.csv").read_text() for run in ("side", "one")]
    assert csv[0] == csv[1]
    for variant in "abc":
        results = [json.loads((tmp_path / run / variant / "results.json").read_text()) for run in ("side", "one")]
        assert results[0]["optimizers"] == results[1]["optimizers"]


@pytest.mark.parametrize("how", ["ctrl-c", "kill", "kill a variant"])
def test_variants_side_by_side_end_with_their_parent(tiny_run, tmp_path, how):
    """An evaluation whose variants run side by side: Ctrl-C to the terminal's process group ends it at once;
    killed outright it leaves no process of its own behind, still writing into the run dir; a variant's process
    killed ends it with one line naming that variant."""
    checkpoint = tiny_run[0] / "train" / "checkpoints" / "best.pt"
    proc = subprocess.Popen([sys.executable, "-m", "l2l_cli", "eval", f"checkpoint={checkpoint}", *VARIANTS,
                             "eval.num_functions=1024",
                             "+eval.variants.a.num_steps=4000", "+eval.variants.b.num_steps=4000", "threads=2",
                             "eval.parallel_variants=2", f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_as_from_a_terminal)
    started = set()
    for line in proc.stdout:  # each process has taken its variant: both are past their start
        started |= {v for v in ("variant a:", "variant b:") if v in line}
        if len(started) == 2:
            break
    children = spawned_children(proc.pid)
    assert len(children) == 2, started
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in stderr, stderr
    elif how == "kill a variant":
        os.kill(children[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "Traceback" not in stderr, stderr
        assert re.fullmatch(r"l2l: error: the process evaluating eval.variants' variant [ab] exited unexpectedly "
                            r"\(exit code -9\)", stderr.strip().splitlines()[-1]), stderr
    else:
        proc.kill()
        proc.communicate(timeout=60)
    deadline = time.time() + 10
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in children):
        assert time.time() < deadline, f"left running: {children}"
        time.sleep(0.05)


def _as_from_a_terminal() -> None:
    """Ctrl-C as a terminal's foreground job gets it: a job started in the background (CI's scripts may be) inherits
    it ignored, and a command keeps an ignored Ctrl-C ignored, as POSIX asks."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0].lower()
    except (FileNotFoundError, IndexError):
        return "zombie"
