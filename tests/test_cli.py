"""The `l2l` command end to end as a subprocess: train, eval, TensorBoard (files and a real server), sweeps, errors."""

import json
import math
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, TINY_TRAIN, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from l2l_cli.core.registry import OPTIMIZEES, OPTIMIZERS
from l2l_cli.core.schemas import DEFAULT_BASELINES

# every optimizer an eval compares: the learned one and the default eval.baselines
EVALUATED = ["lstm", *DEFAULT_BASELINES]
EVAL_STEPS = 10


@pytest.fixture
def trained_and_evaluated(tiny_run):
    """The session's shared tiny train and eval runs (conftest.tiny_run)."""
    return tiny_run


def test_train_writes_checkpoints_logs_and_records(trained_and_evaluated):
    root, train, _ = trained_and_evaluated
    run_dir = root / "train"
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "run.json", "train.log", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/final_loss")] == [0, 3, 6]
    assert len(events.Scalars("train/mean_loss")) == 6
    assert "best validation loss" in train.stdout
    assert train.stdout.count("best validation loss") == 1  # logged once, not twice


def test_es_and_pes_runs_report_what_truncated_bptt_runs_report(trained_and_evaluated, tmp_path):
    root, _, _ = trained_and_evaluated
    pes = run_cli("train", *TINY_TRAIN, "estimator=pes", "estimator.pairs=2", "train.evaluate=false",
                  f"hydra.run.dir={tmp_path}")
    assert pes.returncode == 0, pes.stdout + pes.stderr
    tags = []
    for run_dir in (root / "train", tmp_path):
        events = EventAccumulator(str(run_dir / "tb"))
        events.Reload()
        tags.append(set(events.Tags()["scalars"]))
        assert [e.step for e in events.Scalars("val/final_loss")] == [0, 3, 6]
    assert tags[0] == tags[1]


def test_eval_outputs_and_table(trained_and_evaluated):
    root, _, evaluate = trained_and_evaluated
    out = root / "eval"
    results = json.loads((out / "results.json").read_text())
    assert set(results["optimizers"]) == set(EVALUATED)
    for entry in results["optimizers"].values():
        assert len(entry["mean"]) == EVAL_STEPS + 1 and len(entry["q90"]) == EVAL_STEPS + 1
        assert entry["runs"] == 32 and len(entry["mean_log10"]) == EVAL_STEPS + 1
        assert entry["final_mean_log10"] == entry["mean_log10"][-1] < math.log10(entry["final_mean"])
    for name in ("sgd", "nag", "rmsprop", "adam"):
        lr = results["learning_rates"][name]
        tried = sorted(float(v) for v in lr["validation_scores"])
        # staged: 0.01 and 1.0 screened on 8 of the 16 functions, the better one and 0.1 on all 16, then two
        # refinement rounds of two values each
        assert lr["tuned"] and lr["search"] == "staged" and sorted(map(float, lr["screening_scores"])) == [0.01, 1.0]
        assert len(tried) == 2 + 2 * 2 and 0.1 in tried and len({0.01, 1.0} & set(tried)) == 1
        assert 0.01 / 10**0.25 - 1e-12 <= lr["lr"] <= 10**0.25 + 1e-12
        assert lr["validation_scores"][str(lr["lr"])] == min(lr["validation_scores"].values())
    header = (out / "curves.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "step" and "lstm_mean" in header and "adam_q10" in header
    assert (out / "curves.png").stat().st_size > 10_000
    for name in EVALUATED:
        assert name in evaluate.stdout  # the rich table
    assert "/best" in evaluate.stdout and "diverged" in evaluate.stdout and "log10" in evaluate.stdout


def test_eval_event_files_read_back(trained_and_evaluated):
    root, _, _ = trained_and_evaluated
    for name in EVALUATED:
        events = EventAccumulator(str(root / "eval" / "tb" / name))
        events.Reload()
        assert {"loss/mean", "loss/median", "loss/q10", "loss/q90"} <= set(events.Tags()["scalars"])
        assert [e.step for e in events.Scalars("loss/mean")] == list(range(EVAL_STEPS + 1))
    results = json.loads((root / "eval" / "results.json").read_text())
    events = EventAccumulator(str(root / "eval" / "tb" / "adam"))
    events.Reload()
    assert events.Scalars("loss/mean")[-1].value == pytest.approx(results["optimizers"]["adam"]["final_mean"],
                                                                 rel=1e-6)
    for stats in results["optimizers"].values():  # a quadratic has no data noise: its expected loss is the loss
        assert stats["final_expected_mean"] == pytest.approx(stats["final_mean"], rel=1e-9)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_tensorboard_server_serves_the_five_curves(trained_and_evaluated):
    root, _, _ = trained_and_evaluated
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(root / "eval" / "tb"),
                               "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        runs, deadline = [], time.time() + 60
        while time.time() < deadline and len(runs) < 5:
            try:
                runs = _get_json(f"{base}/data/runs")
            except OSError:
                pass
            time.sleep(0.5)
        assert sorted(runs) == sorted(EVALUATED)
        for run in EVALUATED:
            query = urllib.parse.urlencode({"run": run, "tag": "loss/mean"})
            points = _get_json(f"{base}/data/plugin/scalars/scalars?{query}")
            assert [p[1] for p in points] == list(range(EVAL_STEPS + 1))
        layout = _get_json(f"{base}/data/plugin/custom_scalars/layout")
        assert "loss/mean" in json.dumps(layout)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_two_job_multirun_sweep(tmp_path):
    result = run_cli("train", "-m", "seed=0,1", *TINY_TRAIN, "train.iterations=2", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "last.pt").is_file()
    first, second = (json.loads((tmp_path / j / "run.json").read_text())["config"]["seed"] for j in "01")
    assert (first, second) == (0, 1)


@pytest.mark.parametrize("args, message", [
    (["train", "schedule.unroll=200"], "schedule.unroll: must be <= schedule.num_steps (100), got 200"),
    (["train", "optimizer.preprocess=log"], "optimizer.preprocess: got 'log', allowed values: none, paper, deepmind"),
    (["eval"], "checkpoint: eval with optimizer=lstm needs checkpoint=PATH"),
    (["train", "optimizer=adam"], "optimizer: train needs a learned optimizer"),
    (["fly"], "unknown command 'fly', allowed values: train, eval"),
])
def test_bad_input_fails_with_one_clear_line(tmp_path, args, message):
    result = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_hydra_flags_still_work(tmp_path):
    job = run_cli("train", "--cfg", "job", "optimizer.hidden_size=40")
    assert job.returncode == 0 and "hidden_size: 40" in job.stdout
    help_text = run_cli("eval", "--help")
    assert help_text.returncode == 0 and f"optimizee: {', '.join(OPTIMIZEES.names())}" in help_text.stdout
    assert "schema" not in help_text.stdout.split("== Config ==")[0]  # the dataclass schemas are not choices
    usage = run_cli("--help")
    lines = [line.split() for line in usage.stdout.splitlines() if line.startswith("  ") and line[2] != " "]
    # each name apart from its help
    assert [words[0] for words in lines] == ["train", "eval", "plot", "pretrained", "report"]


def test_help_lists_every_config_group_option():
    """The help's group list (built from the registries and conf/, leaving the schemas out) matches conf/, and every
    registered family and optimizer has its YAML."""
    from l2l_cli.cli.config import config_groups_help

    section = config_groups_help()
    listed = {}
    for line in section.splitlines():
        if ": " in line and not line.startswith("Compose"):
            group, options = line.split(": ", 1)
            listed[group] = options.split(" (")[0].split(", ")
    on_disk = {d.name: sorted(p.stem for p in d.glob("*.yaml"))
               for d in (ROOT / "conf").iterdir() if d.is_dir() and d.name != "hydra"}
    assert listed.pop("baselines (eval.baselines)") == sorted(OPTIMIZERS.baselines())
    assert listed == on_disk
    assert listed["optimizee"] == OPTIMIZEES.names() and listed["optimizer"] == OPTIMIZERS.names()


def test_installed_wheel_runs_from_any_directory(tmp_path):
    """A plain (non-editable) install ships the configs as package data; run it from an unrelated directory."""
    root = Path(__file__).resolve().parent.parent
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "wheel"), str(root)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "wheel").glob("*.whl"))
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                             "import l2l_cli.cli.config as c, l2l_cli.cli.main as m; print(c.config_dir());"
                             " sys.argv=['l2l','train','--cfg','job']; m.main()", str(target)], cwd=elsewhere,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout.splitlines()[0]
    assert "num_steps: 100" in result.stdout
