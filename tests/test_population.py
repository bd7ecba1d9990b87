"""train.population: independent members, the best on validation promoted to best.pt, per-member resume, and
resuming into another run directory (checkpoints carried over)."""

import json

import pytest
import torch
from conftest import TINY_TRAIN, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from l2l_cli.core.checkpoints import load_checkpoint
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
