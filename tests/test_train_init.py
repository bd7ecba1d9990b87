"""train.init: a new meta-training that starts from another run's (or a shipped) learned optimizer, e.g. to fine-tune
it with other settings; recorded in run.json, checked before the run dir is touched."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import TINY_TRAIN, cli_one_line_error, run_cli
from test_meta import _setup

from l2l_cli.api import pretrained as shipping
from l2l_cli.core.checkpoints import load_checkpoint
from l2l_cli.meta.trainer import MetaTrainer


def test_a_run_started_from_a_checkpoint_first_validates_its_weights(tiny_run, tmp_path):
    root, _, _ = tiny_run
    source = root / "train" / "checkpoints" / "best.pt"
    done = run_cli("train", *TINY_TRAIN, f"train.init={source}", "train.evaluate=true", "eval.num_functions=8",
                   "eval.val_functions=4", "eval.lr_grid=[0.1]", f"hydra.run.dir={tmp_path / 'ft'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"starting from the learned optimizer in {source}" in " ".join((done.stdout + done.stderr).split())
    record = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert record["started_from"] == {"checkpoint": str(source), "file": str(source),
                                      "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    first, before = metrics["validation_history"][0], load_checkpoint(source)
    # iteration 0 of the new run validates the weights it started from: the source's best, on the same functions
    assert first[0] == 0 and first[1] == pytest.approx(before["best_val"], rel=1e-5)
    assert metrics["iterations"] == load_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pt")["iteration"]
    assert metrics["val_best"] <= first[1]
    assert before["best_val"] != pytest.approx(json.loads((root / "train" / "metrics.json").read_text())
                                               ["untrained_val"], rel=1e-3)  # a trained start, not a fresh one

    # shipped, its record names where it started: the checkpoint, and the command and commit of the run that wrote it
    info = shipping.package("tuned", tmp_path / "ft", directory=tmp_path)
    first_run = json.loads((root / "train" / "run.json").read_text())
    assert info["started_from"] == {**record["started_from"], "command": " ".join(["l2l train", *first_run["command"]]),
                                    "commit": first_run["environment"]["git_commit"],
                                    "commit_dirty": first_run["environment"]["git_dirty"]}
    assert "train.init=" in info["command"]


@pytest.mark.parametrize("init, extra, message", [
    ("{tmp}/absent.pt", [], "train.init: no checkpoint file at "),
    ("pretrained:no_such_optimizer", [], "no such pretrained optimizer"),
    ("{best}", ["optimizer.hidden_size=7"], "config asks for optimizer.hidden_size=7"),
    ("{tmp}/notes.txt", [], "notes.txt"),
    ("{tmp}/no_model.pt", [], "no_model.pt holds no learned optimizer"),
])
def test_a_bad_init_is_one_line_and_writes_nothing(tiny_run, tmp_path, capsys, monkeypatch, init, extra, message):
    root, _, _ = tiny_run
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    payload = torch.load(root / "train" / "checkpoints" / "best.pt", weights_only=True)
    torch.save({k: v for k, v in payload.items() if k != "model"}, tmp_path / "no_model.pt")
    init = init.format(tmp=tmp_path, best=root / "train" / "checkpoints" / "best.pt")
    line = cli_one_line_error(["train", *TINY_TRAIN, f"train.init={init}", *extra,
                               f"hydra.run.dir={tmp_path / 'run'}"], capsys, monkeypatch)
    assert message in line
    assert not (tmp_path / "run" / "run.json").exists() and not (tmp_path / "run" / "checkpoints").exists()



def test_a_fine_tuning_that_finds_nothing_better_keeps_the_weights_it_started_from(tmp_path, monkeypatch):
    first = MetaTrainer(_setup(tmp_path / "first", iterations=3))
    first.fit()
    source = tmp_path / "first" / "checkpoints" / "best.pt"
    tuned = MetaTrainer(_setup(tmp_path / "tuned", iterations=9, patience=2))
    tuned.start_from(load_checkpoint(source), source)
    scores = iter([1.0, 2.0, 3.0, 4.0])  # iteration 0's validation, then every later one worse
    monkeypatch.setattr(tuned, "validate", lambda *args, **kwargs: next(scores))
    tuned.fit()
    assert (tuned.best_iteration, tuned.best_val, tuned.iteration) == (0, 1.0, 6)  # patience 2 after iteration 0
    kept, started = (load_checkpoint(p)["model"] for p in (tmp_path / "tuned" / "checkpoints" / "best.pt", source))
    assert kept.keys() == started.keys() and all(torch.equal(kept[k], started[k]) for k in kept)
    assert not all(torch.equal(tuned.net.state_dict()[k], started[k]) for k in started)  # it did train on
