"""A run dir belongs to one run: no command writes into a directory holding another run's results (only that
run's own `resume` continues it), stale temporaries of killed writes are cleaned when a run starts, an unwritable
dir fails in one line before Hydra's logging, and a resume never silently shrinks a run. Also the smaller hostile
inputs of issue 28 that touch the command line: memory that cannot fit, every baseline diverging, `l2l plot --out`
onto its input, output piped into `head`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_TRAIN, cli_one_line_error, run_cli

from l2l_cli.cli.main import main
from l2l_cli.cli.run_dir_lock import RunDirTaken, claim, remove_stale_temporaries
from l2l_cli.core import memory
from l2l_cli.core.schemas import ConfigError
from l2l_cli.evaluation.comparison import CurveStats, best_baseline


def _digest(directory: Path) -> dict:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _one_line_error(capsys, argv, monkeypatch) -> str:
    return cli_one_line_error(argv, capsys, monkeypatch)


@pytest.fixture
def finished_run(tiny_run, tmp_path):
    """A copy of the shared tiny train run (tests change nothing in the original)."""
    run_dir = tmp_path / "finished"
    shutil.copytree(tiny_run[0] / "train", run_dir)
    return run_dir


def test_train_into_a_finished_run_without_resume_is_refused_and_changes_nothing(finished_run, capsys, monkeypatch):
    before = _digest(finished_run)
    line = _one_line_error(capsys, ["train", *TINY_TRAIN, f"hydra.run.dir={finished_run}"], monkeypatch)
    assert f"hydra.run.dir={finished_run} holds the results of an earlier `l2l train`" in line
    assert f"continue it with `l2l train resume=true hydra.run.dir={finished_run}`" in line
    # resume from ANOTHER run into it is not its continuation either
    line = _one_line_error(capsys, ["train", *TINY_TRAIN, f"resume={finished_run.parent / 'other'}",
                                    f"hydra.run.dir={finished_run}"], monkeypatch)
    assert "holds the results of an earlier `l2l train`" in line
    assert _digest(finished_run) == before


def test_eval_into_a_train_run_is_refused_and_the_run_still_resumes(finished_run, capsys, monkeypatch):
    before = _digest(finished_run)
    line = _one_line_error(capsys, ["eval", "optimizee.dim=4", f"checkpoint={finished_run}/checkpoints/best.pt",
                                    f"hydra.run.dir={finished_run}"], monkeypatch)
    assert "holds the results of an earlier `l2l train`" in line and "resume" not in line
    assert _digest(finished_run) == before
    (finished_run / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint from a killed write")
    resumed = run_cli("train", *TINY_TRAIN, "train.iterations=7", "resume=true", f"hydra.run.dir={finished_run}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((finished_run / "metrics.json").read_text())["iterations"] == 7
    assert not list(finished_run.rglob("*.tmp"))  # the stale temporary was cleaned when the run started


def test_resume_below_the_iterations_done_is_one_line_and_leaves_the_record(finished_run, capsys, monkeypatch):
    before = _digest(finished_run)
    line = _one_line_error(capsys, ["train", *TINY_TRAIN, "train.iterations=2", "resume=true",
                                    f"hydra.run.dir={finished_run}"], monkeypatch)
    assert "train.iterations=2: below the 6 iterations the resumed checkpoint" in line
    after = _digest(finished_run)
    assert {k: v for k, v in after.items() if not k.startswith(".hydra") and not k.endswith(".log")} == \
        {k: v for k, v in before.items() if not k.startswith(".hydra") and not k.endswith(".log")}


def test_claim_is_also_checked_inside_the_job(tmp_path):
    """When a config file, not the command line, names the dir, the job itself refuses before writing."""
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(RunDirTaken, match="holds the results of an earlier `l2l run"):
        claim(tmp_path, "eval", continuing=False)
    (tmp_path / "results.json").unlink()
    (tmp_path / ".hydra").mkdir()
    claim(tmp_path, "eval", continuing=False)  # Hydra's own files alone: a run that wrote no results


def test_a_sweep_dir_holding_jobs_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").write_text("{}")
    line = _one_line_error(capsys, ["train", "-m", *TINY_TRAIN, "seed=0,1", f"hydra.sweep.dir={tmp_path}"],
                           monkeypatch)
    assert f"hydra.sweep.dir={tmp_path / '0'} holds the results" in line


def test_stale_temporaries_only_in_the_run_layout(tmp_path):
    kept = tmp_path / "a" / "b" / "c" / "d" / ".deep.tmp"
    kept.parent.mkdir(parents=True)
    kept.write_text("x")
    stale = [tmp_path / ".run.json.ab.tmp", tmp_path / "members" / "0" / "checkpoints" / ".last.pt.cd.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert kept.exists()


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory this process cannot create files in, even as root (an immutable directory)."""
    directory = tmp_path / "locked"
    directory.mkdir()
    directory.chmod(0o555)
    immutable = False
    if os.access(directory, os.W_OK) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
    try:
        (directory / "probe").touch()
    except OSError:
        yield directory
    else:
        (directory / "probe").unlink()
        pytest.skip("no way to make an unwritable directory here (root without chattr)")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def test_an_unwritable_run_dir_is_one_line_before_logging(unwritable_dir, capsys, monkeypatch):
    line = _one_line_error(capsys, ["train", *TINY_TRAIN, f"hydra.run.dir={unwritable_dir}"], monkeypatch)
    assert f"hydra.run.dir={unwritable_dir}: cannot write in {unwritable_dir}" in line
    line = _one_line_error(capsys, ["eval", f"hydra.run.dir={unwritable_dir / 'new' / 'eval'}"], monkeypatch)
    assert f"cannot write in {unwritable_dir}" in line


def test_a_size_that_cannot_fit_is_one_line_naming_the_keys(tmp_path, capsys, monkeypatch):
    line = _one_line_error(capsys, ["train", *TINY_TRAIN, "optimizee.dim=100000000",
                                    f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    assert "optimizee size / optimizee.batch_size / schedule.unroll: meta-training 8 functions of 100000000 " \
           "parameters" in line and "more than the" in line
    line = _one_line_error(capsys, ["eval", "optimizer=adam", "optimizee.dim=100000000", "eval.val_functions=4",
                                    f"hydra.run.dir={tmp_path / 'eval'}"], monkeypatch)
    assert "optimizee size / eval.val_functions: 4 functions of 100000000 parameters needs at least" in line


def test_memory_check_against_what_is_available(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    memory.check_fits(1000, "it", "some.key")
    with pytest.raises(ConfigError, match=r"^some.key: it needs at least 1001 bytes, more than the 1000 bytes"):
        memory.check_fits(1001, "it", "some.key")


def test_available_memory_is_read_from_this_machine():
    available = memory.available_bytes()
    assert 2**20 < available < 2**50


def _stats(final: float, nonfinite: int = 0) -> CurveStats:
    return CurveStats(mean=[final], median=[final], q10=[final], q90=[final], nonfinite=nonfinite, runs=4)


def test_no_best_baseline_when_every_baseline_diverged(caplog):
    stats = {"lstm": _stats(1.0), "sgd": _stats(float("nan"), 4), "adam": _stats(0.5, 1)}
    with caplog.at_level("WARNING"):
        assert best_baseline(stats, "lstm") is None
    assert "every baseline (sgd, adam) diverged" in caplog.text
    stats["nag"] = _stats(2.0)
    assert best_baseline(stats, "lstm") == "nag"  # the only one none of whose runs diverged


def test_plot_out_onto_its_input_is_one_line(tiny_run, tmp_path, capsys):
    run_dir = tmp_path / "eval"
    shutil.copytree(tiny_run[0] / "eval", run_dir)
    for out in (run_dir, tmp_path):
        with pytest.raises(SystemExit) as info:
            main(["plot", str(run_dir), "--out", str(out)])
        assert info.value.code == 2
        assert capsys.readouterr().err.strip() == (
            f"l2l: error: plot: --out {out} holds the dir it would read, {run_dir} (its files would mix with the "
            "runs'); choose another --out (default: DIR/plot)")
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in (tiny_run[0] / "eval").iterdir())


@pytest.mark.parametrize("command", [["pretrained"], ["train", *TINY_TRAIN, "train.iterations=3"]])
def test_output_piped_into_a_reader_that_has_gone_ends_quietly(command, tmp_path):
    """As `l2l pretrained | head -1` once head has exited: stdout is a pipe whose reader is closed before l2l
    writes, so every write fails (EPIPE); l2l ends without a BrokenPipeError traceback, and a run still finishes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "l2l_cli", *command, *(
            [f"hydra.run.dir={tmp_path / 'run'}"] if command[0] == "train" else [])], cwd=ROOT, stdout=write_end,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "160"}, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 0
    if command[0] == "train":
        assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
