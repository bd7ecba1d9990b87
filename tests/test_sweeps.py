"""Multirun sweeps on Hydra's launchers and sweepers (as subprocesses, toy sizes), failing jobs, `l2l plot`."""

import csv
import json
import math

import pytest
import yaml
from conftest import TINY_TRAIN, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from l2l_cli.cli.plot import run_name
from l2l_cli.reporting.run_records import RunRecord, collect_runs

TOY = [*TINY_TRAIN, "train.iterations=3", "train.evaluate=true", "eval.num_steps=5", "eval.num_functions=8",
       "eval.val_functions=4", "eval.lr_grid=[0.1]"]


def _sweep(tmp_path, name, *args):
    sweep_dir = tmp_path / name
    result = run_cli("train", "-m", *TOY, *args, f"hydra.sweep.dir={sweep_dir}", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep_dir, result


def _summary(sweep_dir):
    return {row["job"]: row for row in json.loads((sweep_dir / "summary.json").read_text())}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweeps")
    return {
        "joblib": _sweep(tmp, "joblib", "train.meta_lr=0.001,0.01", "hydra/launcher=joblib",
                         "hydra.launcher.n_jobs=2"),
        "submitit": _sweep(tmp, "submitit", "seed=0,1", "hydra/launcher=submitit_local",
                           "hydra.launcher.timeout_min=10"),
        "failing": _sweep(tmp, "failing", "train.meta_lr=0.01,-1,1e9"),
        "optuna": _sweep(tmp, "optuna", "hparams_search=meta_lr", "hydra.sweeper.n_trials=3"),
    }


@pytest.mark.parametrize("name, key, values", [("joblib", "train.meta_lr", [0.001, 0.01]),
                                               ("submitit", "seed", [0, 1])])
def test_parallel_launchers_run_every_job(sweeps, name, key, values):
    sweep_dir, _ = sweeps[name]
    summary = _summary(sweep_dir)
    assert set(summary) == {"0", "1"}
    assert sorted(row["overrides"][key] for row in summary.values()) == values
    for job in ("0", "1"):
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert math.isfinite(metrics["val_best"]) and (sweep_dir / job / "eval" / "results.json").is_file()
        assert summary[job]["status"] == "ok" and summary[job]["val_best"] == metrics["val_best"]


def test_joblib_jobs_split_the_cores(sweeps):
    sweep_dir, _ = sweeps["joblib"]
    threads = [json.loads((sweep_dir / j / "run.json").read_text())["environment"]["torch_threads"] for j in "01"]
    assert threads == [1, 1]  # 2 cores / 2 workers


def test_failing_job_is_recorded_and_the_sweep_goes_on(sweeps):
    sweep_dir, result = sweeps["failing"]
    summary = _summary(sweep_dir)
    assert summary["0"]["status"] == "ok" and math.isfinite(summary["0"]["val_best"])
    assert summary["1"]["status"] == "failed"
    assert "train.meta_lr: must be a positive number, got -1.0" in summary["1"]["error"]
    error = json.loads((sweep_dir / "1" / "error.json").read_text())
    assert error["overrides"][-1] == "train.meta_lr=-1" or "train.meta_lr=-1" in error["overrides"]
    assert "failed" in result.stdout and "3 jobs, 1 failed" in " ".join(result.stdout.split())
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]


def test_a_meta_training_that_blew_up_without_a_nan_is_marked(sweeps):
    """train.meta_lr=1e9 runs to the end with finite, enormous losses: the job, its metrics, its evaluation and the
    sweep summary say it is no better than the untrained optimizer."""
    sweep_dir, result = sweeps["failing"]
    summary = _summary(sweep_dir)
    assert summary["0"]["improved"] is True and summary["2"]["improved"] is False
    metrics = json.loads((sweep_dir / "2" / "metrics.json").read_text())
    assert not metrics["improved"] and not metrics["best_val"] < metrics["untrained_val"]
    assert json.loads((sweep_dir / "2" / "eval" / "results.json").read_text())["learned"]["improved"] is False
    text = " ".join(result.stdout.split() + result.stderr.split())
    assert "meta-training did not help" in text and "lower train.meta_lr" in text
    assert "no better than untrained" in text


def test_optuna_meta_lr_search_persists_the_best(sweeps):
    sweep_dir, _ = sweeps["optuna"]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    summary = _summary(sweep_dir)
    assert len(summary) == 3
    lrs = [row["overrides"]["train.meta_lr"] for row in summary.values()]
    assert all(1e-4 <= lr <= 3e-2 for lr in lrs) and len(set(lrs)) == 3
    best_row = min(summary.values(), key=lambda row: row["val_best"])
    assert best["best_params"]["train.meta_lr"] == pytest.approx(best_row["overrides"]["train.meta_lr"])
    assert best["best_value"] == pytest.approx(best_row["val_best"])


def test_plot_across_sweeps_and_eval_dirs(sweeps, tmp_path):
    joblib_dir, failing_dir = sweeps["joblib"][0], sweeps["failing"][0]
    eval_dir = sweeps["submitit"][0] / "0" / "eval"
    out = tmp_path / "plot"
    result = run_cli("plot", str(joblib_dir), str(failing_dir), str(eval_dir), "--out", str(out),
                     env={"COLUMNS": "220"})
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert len(rows) == 6  # 2 joblib jobs, 3 failing-sweep jobs, 1 eval dir
    statuses = [r["status"] for r in rows]
    assert statuses.count("failed") == 1 and statuses[-1] == "failed"
    vals = [float(r["val_best"]) for r in rows if r["val_best"] not in ("", "nan")]
    assert vals == sorted(vals)
    assert (out / "comparison.png").stat().st_size > 10_000
    assert len(list((out / "tb").iterdir())) == 6
    for row in rows:
        events = EventAccumulator(str(out / "tb" / run_name(RunRecord(path=out, label=row["run"]))))
        events.Reload()
        if row["status"] == "ok":
            assert [e.step for e in events.Scalars("loss/mean")] == list(range(6))
        hparams = events.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in hparams and "_hparams_/experiment" in hparams
    assert "6 runs" in result.stdout


def test_plot_rejects_empty_or_missing_dirs(tmp_path):
    result = run_cli("plot", str(tmp_path / "nope"))
    assert result.returncode == 2 and "not a directory" in result.stderr
    result = run_cli("plot", str(tmp_path))
    assert result.returncode == 2 and "no runs" in result.stderr


def test_collect_runs_orders_by_validation_metric(sweeps):
    records = collect_runs([sweeps["joblib"][0]])
    assert [r.val_best for r in records] == sorted(r.val_best for r in records)


@pytest.mark.parametrize("launcher, configured, expected", [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, None, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, None, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 1}, None, 2),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}, None, 1),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 4},
     None, 4),
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, None, None),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 3, 3),
])
def test_job_threads_share_the_cores(monkeypatch, launcher, configured, expected):
    from types import SimpleNamespace

    from l2l_cli.cli import job as common

    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(common.HydraConfig, "get", staticmethod(lambda: SimpleNamespace(launcher=launcher)))
    assert common.job_threads(configured) == expected


def test_seeds_are_one_configuration_in_the_sweep_summary_and_in_plot(sweeps, tmp_path):
    """The submitit sweep ran seed=0,1 of one configuration: one group of two seeds, whose ratios are the jobs'
    own (learned / best tuned baseline, mean final test loss)."""
    sweep_dir, result = sweeps["submitit"]
    (group,) = json.loads((sweep_dir / "seeds.json").read_text())
    ratios = []
    for job in ("0", "1"):
        results = json.loads((sweep_dir / job / "eval" / "results.json").read_text())
        optimizers = results["optimizers"]
        ratios.append(optimizers[results["studied"]]["final_mean"] / optimizers[results["best_baseline"]]["final_mean"])
    assert group["seeds"] == [0, 1] and group["ratios"] == pytest.approx(ratios)
    assert group["ratio_mean"] == pytest.approx(sum(ratios) / 2)
    assert group["ratio_std"] == pytest.approx(abs(ratios[0] - ratios[1]) / math.sqrt(2))
    half = 12.706 * group["ratio_std"] / math.sqrt(2)  # Student's t, 1 degree of freedom (to 5 digits)
    assert group["ratio_ci95"] == pytest.approx([group["ratio_mean"] - half, group["ratio_mean"] + half], rel=1e-4)
    assert group["beat_best_baseline"] == sum(r < 1 for r in ratios)
    assert "over seeds" in result.stdout and (sweep_dir / "seeds.csv").is_file()
    assert not (sweeps["joblib"][0] / "seeds.json").exists()  # no configuration there ran twice
    out = tmp_path / "plot"
    plotted = run_cli("plot", str(sweep_dir), "--out", str(out), env={"COLUMNS": "220"})
    assert plotted.returncode == 0, plotted.stderr
    (row,) = list(csv.DictReader(open(out / "seeds.csv")))
    assert row["seeds"] == "0 1" and float(row["ratio_mean"]) == pytest.approx(group["ratio_mean"])
    (tb,) = list((out / "tb_seeds").iterdir())
    events = EventAccumulator(str(tb))
    events.Reload()
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert "1 configurations over seeds" in " ".join(plotted.stdout.split())


def test_seed_group_statistics():
    from l2l_cli.reporting.seed_stats import SeedGroup, t975

    group = SeedGroup("x", {}, runs=[(s, r, -0.5) for s, r in enumerate([0.8, 1.2, 0.9, 0.7, 0.9])])
    assert group.mean == pytest.approx(0.9) and group.std == pytest.approx(math.sqrt(0.035))
    low, high = group.interval
    assert high - group.mean == pytest.approx(2.7764 * math.sqrt(0.035 / 5), rel=1e-4)  # t(0.975, 4), 5 digits
    assert group.wins == 4 and group.log10_gap == -0.5
    assert t975(30) == pytest.approx(2.042, abs=0.005) and t975(60) == pytest.approx(2.000, abs=0.005)
