"""The parts MetaTrainer is made of, each on its own: the curriculum's state machine, the weight average, the
non-finite guard, the stop signal, the checkpoints, and the schedules and estimators through their registries."""

from __future__ import annotations

import math

import pytest
import torch

from l2l_cli.core.checkpoints import CheckpointError, load_checkpoint
from l2l_cli.core.registry import ESTIMATORS, SCHEDULES
from l2l_cli.core.schemas import TrainLoopConfig
from l2l_cli.meta.averaging import WeightAverage
from l2l_cli.meta.estimators.base import Estimator, EstimatorRun
from l2l_cli.meta.policy import plan_training
from l2l_cli.meta.schedules.curriculum import Curriculum, CurriculumScheduleConfig
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.meta.stopping import DivergenceError, NonFiniteGuard, StopSignal
from l2l_cli.meta.trainer import MetaTrainer
from l2l_cli.optimizees.quadratic import QuadraticConfig, QuadraticFamily
from l2l_cli.optimizers.learned.lstm import LSTMConfig


def test_curriculum_ends_a_stage_on_patience_or_its_iteration_budget():
    c = Curriculum([10, 20, 40], patience=2, stage_iterations=5)
    assert c.active and (c.horizon, c.val_horizon) == (10, 20)
    assert not c.stage_over(gain=True, iteration=1) and not c.stage_over(gain=False, iteration=2)
    assert c.stage_over(gain=False, iteration=3)  # two validations in a row without a gain
    assert c.end_stage(gained=True)
    c.advance(iteration=3, reference=1.5)
    assert (c.stage, c.stage_start, c.stale, c.reference) == (1, 3, 0, 1.5)
    assert (c.horizon, c.val_horizon) == (20, 40)
    assert not c.stage_over(gain=True, iteration=7) and c.stage_over(gain=True, iteration=8)  # 5 iterations
    assert not c.end_stage(gained=False) and c.finished  # a stage that gained nothing ends training


def test_curriculum_finishes_after_its_last_stage_and_its_state_round_trips():
    c = Curriculum([10, 20], patience=1, stage_iterations=100)
    c.advance(iteration=4, reference=2.0)
    assert c.val_horizon == 20 and not c.end_stage(gained=True) and c.finished
    again = Curriculum([10, 20], patience=1, stage_iterations=100)
    again.load_state(c.state())
    assert again == c


def test_every_schedule_but_the_curriculum_has_one_stage():
    for name in SCHEDULES.names():
        schedule = SCHEDULES.get(name).build(SCHEDULES.get(name).default_config())
        curriculum = Curriculum.of(schedule)
        assert curriculum.active == (name == "curriculum")
        lengths = schedule.unroll_lengths(schedule.config.num_steps, torch.Generator().manual_seed(0))
        assert sum(lengths) == schedule.config.num_steps and all(k >= 1 for k in lengths)
    assert Curriculum.of(SCHEDULES.get("curriculum").build(CurriculumScheduleConfig())).horizons == [100, 200, 500,
                                                                                                    1000]


def test_weight_average_warms_up_and_swaps_in_place():
    net = torch.nn.Linear(2, 1)
    average = WeightAverage(net, decay=0.9)
    start = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    average.update(iteration=0)  # warm-up: decay min(0.9, 1/10) = 0.1
    for avg, s in zip(average.weights, start, strict=True):
        torch.testing.assert_close(avg, s + 0.9)
    trained = [p.detach().clone() for p in net.parameters()]
    ids = [id(p) for p in net.parameters()]
    with average.swapped_in():
        assert all(torch.equal(p, a) for p, a in zip(net.parameters(), average.weights, strict=True))
    assert [id(p) for p in net.parameters()] == ids  # the same tensors: compiled steps keep reading them
    assert all(torch.equal(p, t) for p, t in zip(net.parameters(), trained, strict=True))
    state = average.evaluated_state()
    assert torch.equal(state["weight"], average.weights[0]) and not torch.equal(state["weight"], net.weight)
    off = WeightAverage(net, decay=0.0)
    off.update(0)
    assert not off.on and torch.equal(off.evaluated_state()["weight"], net.weight)


def test_non_finite_guard_counts_in_a_row_and_in_all():
    guard = NonFiniteGuard(limit=3)
    guard.record([True, False, False])
    assert guard.total == 2 and guard.in_row == 2 and not guard.tripped
    guard.record([True, False])
    assert guard.in_row == 1 and guard.total == 3
    guard.record([False, False])
    assert guard.tripped
    error = guard.error(0.003, output_scale=0.1)
    assert isinstance(error, DivergenceError)
    assert "3 meta-updates in a row" in str(error) and "train.meta_lr (now 0.003)" in str(error)
    assert "optimizer.output_scale (now 0.1)" in str(error)


def test_stop_signal_reports_the_signal_of_a_single_process():
    signals = iter([0, 15])
    stop = StopSignal(lambda: next(signals), rank=None, device=torch.device("cpu"))
    assert stop.poll() == 0 and stop.poll() == 15


def tiny_trainer(tmp_path, estimator: str = "tbptt", **loop) -> MetaTrainer:
    cfg = QuadraticConfig(dim=3, batch_size=2)
    setup = plan_training(family=QuadraticFamily(cfg), optimizee=cfg, optimizer=LSTMConfig(hidden_size=4),
                          schedule=TruncatedScheduleConfig(num_steps=4, unroll=2),
                          loop=TrainLoopConfig(**{"iterations": 2, "val_every": 1, "val_functions": 2, **loop}),
                          seed=0, data_seed=0, device=torch.device("cpu"), out_dir=tmp_path, compile=False,
                          estimator=ESTIMATORS.get(estimator).default_config())
    return MetaTrainer(setup)


def test_checkpoints_hold_every_part_and_refuse_another_member(tmp_path):
    trainer = tiny_trainer(tmp_path, "pes", ema_decay=0.5)
    trainer.fit()
    payload = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert payload["estimator"] == {"name": "pes", "sigma": 0.01, "pairs": 2, "shared": False}
    assert payload["curriculum"] == trainer.curriculum.state() and payload["skipped_total"] == 0
    assert "trained_model" in payload and payload["iteration"] == 2 and len(payload["history"]) == 3
    other = tiny_trainer(tmp_path / "other", "pes", ema_decay=0.5)
    other.restore(payload, tmp_path / "checkpoints" / "last.pt")
    assert other.iteration == 2 and other.history == trainer.history and torch.equal(other.gen.get_state(),
                                                                                       trainer.gen.get_state())
    assert all(torch.equal(a, b) for a, b in zip(other.average.weights, trainer.average.weights, strict=True))
    assert (tmp_path / "other" / "checkpoints" / "best.pt").is_file()  # carried over into the new run dir
    payload["member"] = 1
    with pytest.raises(CheckpointError, match="population member 1's, not member 0's"):
        tiny_trainer(tmp_path / "third").restore(payload, tmp_path / "checkpoints" / "last.pt")


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_every_estimator_follows_the_interface(tmp_path, name):
    trainer = tiny_trainer(tmp_path, name)
    estimator = trainer.estimator
    assert isinstance(estimator, Estimator) and estimator.config.name == name
    assert estimator.compiles == estimator.differentiates == (name == "tbptt")
    family = trainer.train_family
    problem = family.sample(2, 4, torch.Generator().manual_seed(0))
    run = estimator.start(family, problem, gen=torch.Generator().manual_seed(1), weighting="uniform")
    assert isinstance(run, EstimatorRun)
    result = run.unroll(0, 2)
    assert [g.shape for g in result.grads] == [p.shape for p in trainer.net.parameters()]
    assert math.isfinite(float(result.loss_sum)) and result.final.shape == (2,)
