"""Pretrained learned optimizers shipped in the package: their recorded figures still hold, `pretrained:<name>`
works wherever a checkpoint does, `l2l pretrained` lists them, packaging a run, and the example script."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_TRAIN, run_cli

from l2l_cli import pretrained
from l2l_cli.api import pretrained as shipping
from l2l_cli.cli import pretrained as pretrained_command
from l2l_cli.core.checkpoints import CheckpointError, load_checkpoint
from l2l_cli.core.checks import ConfigError

SHIPPED = pretrained.names()


def test_the_default_families_are_shipped():
    assert {"quadratic", "mnist", "general"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_recorded_figures_still_hold(name, request):
    """Re-evaluate the shipped optimizer and its run's best tuned baseline on the recorded test functions: the same
    mean final losses (small tolerance: other CPUs round differently), the same winner. A record made on installed
    data (Fashion-MNIST, foolbox's ImageNet photographs) is checked where that data is installed."""
    info = pretrained.record(name)
    check = info["check"]
    payload = load_checkpoint(pretrained.resolve(f"pretrained:{name}"))
    if (info.get("data") or {}).get("dataset") == "fashion_mnist":
        request.getfixturevalue("fashion_mnist")
    if payload["optimizee"].get("content_photos") == "imagenet":
        request.getfixturevalue("foolbox_data")
    now = shipping.check_figures(payload, check["baseline"], check["baseline_lr"], check["num_functions"],
                                 check.get("task"))
    assert now["num_steps"] == check["num_steps"] == info["evaluation"]["num_steps"]
    for key in ("learned_final_mean", "baseline_final_mean"):
        assert math.isclose(now[key], check[key], rel_tol=0.02), (key, now[key], check[key])
    assert (now["learned_final_mean"] < now["baseline_final_mean"]) == (
        check["learned_final_mean"] < check["baseline_final_mean"])
    assert info["commit"] and info["command"].startswith("l2l train") and info["family"] == payload["optimizee"]["name"]
    assert set(info["evaluation"]["optimizers"]) >= {info["architecture"], info["evaluation"]["best_baseline"]}


def test_an_unknown_name_fails_with_one_line():
    with pytest.raises(CheckpointError, match=r"^checkpoint pretrained:nope: no such pretrained optimizer, allowed "
                                              r"values: pretrained:"):
        pretrained.resolve("pretrained:nope")


@pytest.mark.slow
def test_eval_and_the_listing_take_pretrained_names(tmp_path):
    result = run_cli("eval", "checkpoint=pretrained:quadratic", "eval.num_functions=16", "eval.val_functions=8",
                     "eval.lr_grid=[0.1,0.3]", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["learned"]["checkpoint"] == "pretrained:quadratic" and results["learned"]["improved"] is True
    listing = run_cli("pretrained")
    assert listing.returncode == 0, listing.stderr
    for name in SHIPPED:
        assert f"pretrained:{name}" in listing.stdout
        info = pretrained.record(name)
        assert f"{info['evaluation']['optimizers'][info['architecture']]['final_mean']:.4g}" in listing.stdout
        if info.get("variants"):  # a mixture's row says which column its figures are
            first = next(iter(info["variants"]))
            assert f"{first} {info['evaluation']['num_test_functions']}x{info['evaluation']['num_steps']}" \
                in listing.stdout


@pytest.mark.slow
def test_packaging_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    train = run_cli("train", *TINY_TRAIN, "train.evaluate=true", "eval.num_functions=8", "eval.val_functions=4",
                    "eval.lr_grid=[0.1]", f"hydra.run.dir={run_dir}")
    assert train.returncode == 0, train.stderr[-2000:]
    info = shipping.package("tiny", run_dir, directory=tmp_path)
    assert pretrained.names(tmp_path) == ["tiny"]
    assert pretrained.resolve("pretrained:tiny", tmp_path) == tmp_path / "tiny.pt"
    shipped = load_checkpoint(tmp_path / "tiny.pt")
    assert "meta_optimizer" not in shipped and "rng" not in shipped  # training state stays behind
    assert info["trained"]["iterations"] == 6 and info["seeds"] == {"seed": 0, "data_seed": 0}
    assert info["command"].startswith("l2l train debug=tiny") and info["trained"]["resumes"] == []
    assert "data" in info and info["data"] == json.loads((run_dir / "eval" / "results.json").read_text()).get("data")
    again = shipping.check_figures(shipped, info["check"]["baseline"], info["check"]["baseline_lr"],
                                     info["check"]["num_functions"])
    assert again == info["check"]
    with pytest.raises(ConfigError, match=r"pretrained:tiny exists \(tiny.pt, tiny.json in .*\); add --replace"):
        shipping.package("tiny", run_dir, directory=tmp_path)
    assert shipping.package("tiny", run_dir, directory=tmp_path, replace=True)["check"] == info["check"]
    record = json.loads((run_dir / "run.json").read_text())  # as a run resumed at another commit records it
    started = {**record["environment"], "git_commit": "0123456789abcdef", "git_dirty": False}
    (run_dir / "run.json").write_text(json.dumps({**record, "earlier_environments": [started]}))
    resumed = shipping.package("tiny", run_dir, directory=tmp_path, replace=True)
    assert (resumed["commit"], resumed["commit_dirty"]) == ("0123456789abcdef", False)
    assert resumed["resumed_at"] == [{"commit": info["commit"], "commit_dirty": info["commit_dirty"]}]
    assert "resumed_at" not in info


def test_the_shipped_names_are_the_shipped_files():
    assert set(pretrained.SHIPPED) == set(SHIPPED)


@pytest.mark.parametrize("name, message", [
    ("../../x", "a plain identifier is allowed"), ("x/y", "a plain identifier is allowed"),
    ("", "a plain identifier is allowed"), ("a" * 65, "a plain identifier is allowed"),
    ("bad name", "a plain identifier is allowed"), ("_x", "a plain identifier is allowed"),
    ("quadratic", "pretrained:quadratic is shipped with l2l and is never replaced"),
    ("mnist", "pretrained:mnist is shipped with l2l and is never replaced"),
    ("general", "pretrained:general is shipped with l2l and is never replaced")])
def test_pretrained_add_refuses_names_before_reading_anything(name, message, tmp_path, capsys):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in pretrained.HERE.iterdir())
    with pytest.raises(SystemExit) as info:
        pretrained_command.main(["add", "--", name, str(tmp_path / "no-such-run")])
    stderr = capsys.readouterr().err
    assert info.value.code == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"l2l: error: pretrained add: NAME {name!r}: ") and message in stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in pretrained.HERE.iterdir()) == before
    assert not (ROOT.parent / "x.pt").exists()


def test_a_user_added_name_is_replaced_only_when_asked(tmp_path):
    (tmp_path / "mine.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"pretrained:mine exists \(mine.json in "):
        shipping.check_name("mine", tmp_path, replace=False)
    shipping.check_name("mine", tmp_path, replace=True)
    shipping.check_name("quadratic", tmp_path, replace=False)  # only the package's own shipped files are protected


@pytest.mark.slow
def test_the_example_trains_a_module_with_the_pretrained_mnist_optimizer():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "train_with_pretrained.py")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("learned") and "pretrained:mnist" in lines[0] and lines[1].startswith("adam")
