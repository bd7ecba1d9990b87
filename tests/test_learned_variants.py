"""LSTM+GAC, NTM-BFGS and RNNprop, and the training tricks of later work: random scaling, a curriculum over the
optimizee horizon, log-uniform truncations. (The contract tests cover every new architecture on every family.)"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from l2l_cli.core.random_streams import generator
from l2l_cli.core.schemas import ConfigError, TrainLoopConfig
from l2l_cli.meta.policy import plan_training
from l2l_cli.meta.schedules.curriculum import CurriculumScheduleConfig
from l2l_cli.meta.schedules.loguniform import LogUniformSchedule, LogUniformScheduleConfig
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.meta.trainer import MetaTrainer, random_scale
from l2l_cli.optimizees import build_family
from l2l_cli.optimizees.base import loss_and_grad
from l2l_cli.optimizees.mnist import MLPConfig
from l2l_cli.optimizees.quadratic import QuadraticConfig, QuadraticFamily
from l2l_cli.optimizees.rescaled import RescaledFamily, RescaledProblems
from l2l_cli.optimizers.learned.lstm import CoordinatewiseLSTM, LSTMConfig
from l2l_cli.optimizers.learned.lstm_gac import GlobalAveragingLSTM, LSTMGACConfig, average_cells
from l2l_cli.optimizers.learned.ntm_bfgs import NTMBFGS, NTMBFGSConfig, dense_memory, read_memory, write_memory
from l2l_cli.optimizers.learned.rnnprop import RNNprop, RNNpropConfig, bias_corrections, rnnprop_inputs
from tests.conftest import run_cli

D = torch.float64


def steps(net, grads):
    """Updates of ``net`` over a sequence of (n, P) gradients."""
    state, out = net.init_state(grads[0]), []
    with torch.no_grad():
        for t, g in enumerate(grads):
            update, state = net.step(g, state, t)
            out.append(update)
    return torch.stack(out)


# --- LSTM+GAC -----------------------------------------------------------------------------------------------------

def test_global_averaging_cells_average_within_each_optimizee_only():
    h = torch.arange(24, dtype=D).view(4, 6)  # 4 cells, 2 optimizees x 3 coordinates
    out = average_cells(h, 2, functions=2)
    torch.testing.assert_close(out[:2, :3], h[:2, :3].mean(1, keepdim=True).expand(2, 3))
    torch.testing.assert_close(out[:2, 3:], h[:2, 3:].mean(1, keepdim=True).expand(2, 3))
    torch.testing.assert_close(out[2:], h[2:])  # the other cells stay coordinatewise


def test_gac_shares_within_an_optimizee_and_never_across():
    torch.manual_seed(0)
    net = GlobalAveragingLSTM(LSTMGACConfig(gac_fraction=0.5)).to(D)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(3, 5, generator=gen, dtype=D) for _ in range(3)]
    base = steps(net, grads)
    # another coordinate of optimizee 0 changes: coordinate 0 of optimizee 0 hears of it (shared cells)
    mine = steps(net, [torch.cat((torch.cat((g[:1, :1], 5 * g[:1, 1:]), 1), g[1:])) for g in grads])
    assert (mine[1:, 0, 0] - base[1:, 0, 0]).abs().max() > 1e-6
    # other optimizees change, or the batch is cut: optimizee 0 is exactly as before
    torch.testing.assert_close(steps(net, [torch.cat((g[:1], -7 * g[1:])) for g in grads])[:, 0], base[:, 0],
                               rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(steps(net, [g[:1] for g in grads])[:, 0], base[:, 0], rtol=1e-12, atol=1e-15)


def test_gac_without_averaging_cells_is_the_paper_lstm():
    torch.manual_seed(0)
    gac = GlobalAveragingLSTM(LSTMGACConfig(gac_fraction=0.0)).to(D)
    plain = CoordinatewiseLSTM(LSTMConfig()).to(D)
    plain.load_state_dict(gac.state_dict())
    grads = [torch.randn(2, 4, dtype=D) for _ in range(3)]
    torch.testing.assert_close(steps(gac, grads), steps(plain, grads), rtol=1e-12, atol=1e-15)


# --- NTM-BFGS -----------------------------------------------------------------------------------------------------

def test_ntm_memory_in_factored_form_equals_the_dense_low_rank_memory():
    gen = torch.Generator().manual_seed(0)
    n, P, slots, heads = 2, 5, 6, 2
    left = torch.zeros(n, slots, P, dtype=D)
    right = torch.zeros(n, slots, P, dtype=D)
    dense = torch.zeros(n, P, P, dtype=D)
    writes = []
    for _ in range(4):  # 4 writes of 2 heads into 6 slots: the first write drops out
        a, b = (torch.randn(n, heads, P, generator=gen, dtype=D) for _ in range(2))
        left, right = write_memory(left, right, a, b)
        writes.append((a, b))
    for a, b in writes[1:]:  # the sliding history: M = sum over the kept writes of a b^T / P
        dense += torch.einsum("nwp,nwq->npq", a, b) / P
    torch.testing.assert_close(dense_memory(left, right), dense)
    r = torch.randn(n, 3, P, generator=gen, dtype=D)
    torch.testing.assert_close(read_memory(left, right, r), torch.einsum("npq,nrq->nrp", dense, r))


def test_ntm_bfgs_reads_its_memory_and_keeps_optimizees_apart():
    torch.manual_seed(0)
    cfg = NTMBFGSConfig(memory_size=3)
    net = NTMBFGS(cfg).to(D)
    grad = torch.randn(2, 4, dtype=D)
    state = net.init_state(grad)
    with torch.no_grad():
        update, state = net.step(grad, state)
    layers, left, right, reads = state
    assert left.shape == right.shape == (2, cfg.memory_size * cfg.write_heads, 4)  # O(P x rank), never P x P
    torch.testing.assert_close(update, reads.sum(1) * cfg.output_scale)
    # the step is the read: M r with M the dense form of the memory
    out = net.heads(layers[-1][0].t()).view(2, 4, -1).permute(0, 2, 1)
    expected = torch.einsum("npq,nq->np", dense_memory(left, right), out[:, 0])
    torch.testing.assert_close(reads[:, 0], expected)


# --- RNNprop ------------------------------------------------------------------------------------------------------

def test_rnnprop_inputs_equal_a_hand_computation():
    b1, b2, eps = 0.9, 0.99, 1e-8
    gs = [0.5, -2.0, 0.25]
    m = v = torch.zeros(1, dtype=D)
    for t, g in enumerate(gs):
        g = torch.tensor([g], dtype=D)
        features, m, v = rnnprop_inputs(g, m, v, bias_corrections(t, b1, b2, g), b1, b2, eps)
    hand_m = hand_v = 0.0
    for g in gs:
        hand_m, hand_v = b1 * hand_m + (1 - b1) * g, b2 * hand_v + (1 - b2) * g * g
    m_hat, v_hat = hand_m / (1 - b1 ** 3), hand_v / (1 - b2 ** 3)
    assert features[0].item() == pytest.approx(m_hat / (math.sqrt(v_hat) + eps), rel=1e-12)
    assert features[1].item() == pytest.approx(gs[-1] / (math.sqrt(v_hat) + eps), rel=1e-12)


def test_rnnprop_is_scale_free_and_bounded():
    torch.manual_seed(0)
    cfg = RNNpropConfig(eps=1e-30)
    net = RNNprop(cfg).to(D)
    grads = [torch.randn(2, 6, dtype=D) for _ in range(4)]
    # Adam's normalised moments do not see the gradient's scale, so neither does the update
    torch.testing.assert_close(steps(net, [1e4 * g for g in grads]), steps(net, grads), rtol=1e-9, atol=1e-12)
    assert steps(net, grads).abs().max() <= cfg.output_scale


# --- random scaling -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [QuadraticFamily(QuadraticConfig(dim=4)),
                                    build_family(MLPConfig(hidden=3, minibatch=4))])
def test_random_scaling_leaves_the_optimizee_equivalent(family):
    scaled = RescaledFamily(family, 3.0)
    problem = scaled.sample(3, 4, generator(0, "train"), torch.device("cpu"))
    s, inner = problem.scale, problem.problem
    assert s.shape == (3, family.num_params) and bool(((s.log().abs() <= 3.0) & (s != 1)).all())
    assert s.log().std() > 1.0  # spread over (-3, 3), not a constant
    theta = torch.randn(3, family.num_params)
    losses, grad = loss_and_grad(scaled, problem, theta / s, 2)  # f(s * theta') at theta' = theta / s
    ref_losses, ref_grad = loss_and_grad(family, inner, theta, 2)
    torch.testing.assert_close(losses, ref_losses)
    torch.testing.assert_close(grad, ref_grad * s)  # the chain rule
    torch.testing.assert_close(scaled.initial_params(problem) * s, family.initial_params(inner))
    part = scaled.select(problem, 1, 3)
    torch.testing.assert_close(loss_and_grad(scaled, part, theta[1:3] / s[1:3], 2)[0], ref_losses[1:3])


def test_meta_training_rescales_its_functions_and_validation_never_does(tmp_path):
    trainer = tiny_trainer(tmp_path, TrainLoopConfig(iterations=1, val_every=1, val_functions=2, random_scale=2.0))
    assert isinstance(trainer.train_family, RescaledFamily) and trainer.train_family.c == 2.0
    trainer.fit()
    assert all(not isinstance(p, RescaledProblems) for p in trainer.validator.problems.values())
    plain = tiny_trainer(tmp_path / "plain", TrainLoopConfig(iterations=1, val_every=1, val_functions=2))
    assert plain.train_family is plain.s.family
    with pytest.raises(ConfigError, match=r"train.random_scale: must be >= 0 \(0 = off\) or null \(the learned "
                                          r"optimizer's recipe\), got -1"):
        TrainLoopConfig(random_scale=-1)
    # null: the architecture's recipe, 3 for RNNprop (Lv et al.), off for the others
    assert random_scale(TrainLoopConfig(), RNNpropConfig()) == 3.0
    assert random_scale(TrainLoopConfig(), LSTMConfig()) == 0
    assert random_scale(TrainLoopConfig(random_scale=0), RNNpropConfig()) == 0


# --- unroll schedules ---------------------------------------------------------------------------------------------

def tiny_trainer(tmp_path, loop: TrainLoopConfig, schedule=None) -> MetaTrainer:
    cfg = QuadraticConfig(dim=3, batch_size=2)
    setup = plan_training(family=QuadraticFamily(cfg), optimizee=cfg, optimizer=LSTMConfig(hidden_size=4),
                          schedule=schedule or TruncatedScheduleConfig(num_steps=4, unroll=2), loop=loop, seed=0,
                          data_seed=0, device=torch.device("cpu"), out_dir=tmp_path, compile=False)
    return MetaTrainer(setup)


def test_log_uniform_truncations_stay_in_bounds_and_cover_the_run():
    schedule = LogUniformScheduleConfig(num_steps=100, unroll=20, min_unroll=4)
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(200):
        lengths = LogUniformSchedule(schedule).unroll_lengths(100, gen)
        assert sum(lengths) == 100
        assert all(4 <= k <= 20 for k in lengths[:-1]) and 1 <= lengths[-1] <= 20  # the last one fits the run
        seen += lengths[:-1]
    assert min(seen) == 4 and max(seen) == 20  # both bounds are drawn
    # log-uniform: as many lengths in [4, 9) as in [9, 20] (ln 9/4 ~ ln 20/9), far from uniform's 5:12
    low = sum(k < 9 for k in seen) / len(seen)
    assert 0.4 < low < 0.6
    again = torch.Generator().manual_seed(0)
    assert LogUniformSchedule(schedule).unroll_lengths(100, again) == LogUniformSchedule(LogUniformScheduleConfig(
        num_steps=100, unroll=20, min_unroll=4)).unroll_lengths(100, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"schedule.min_unroll: must be in \[1, schedule.unroll\] = \[1, 20\], "
                                          r"got 30"):
        LogUniformScheduleConfig(unroll=20, min_unroll=30)


def test_curriculum_advances_restores_and_stops(tmp_path, monkeypatch):
    schedule = CurriculumScheduleConfig(stages=[2, 4, 6], num_steps=6, unroll=2, stage_iterations=3, patience=1)
    trainer = tiny_trainer(tmp_path, TrainLoopConfig(iterations=20, val_every=1, val_functions=2), schedule)
    horizons, sampled = [], []
    sample = trainer.train_family.sample
    monkeypatch.setattr(trainer.train_family, "sample",
                        lambda n, steps, *a, **k: sampled.append(steps) or sample(n, steps, *a, **k))
    # scripted scores: iteration 0 (9.0); stage 0 gains twice, then not (patience 1): its best (iteration 2) is
    # restored and stage 1 starts from it (5.0 at stage 1's validation horizon); stage 1 gains once (iteration 4),
    # then not: restored, stage 2 starts (4.2); stage 2 gains nothing: stage 1's best restored, training stops
    scores = iter([9.0, 8.0, 7.0, 7.5, 5.0, 4.0, 4.5, 4.2, 4.3])
    weights = {}

    def validate():
        horizons.append(trainer.curriculum.val_horizon)
        weights.setdefault(trainer.iteration, [p.detach().clone() for p in trainer.net.parameters()])
        return next(scores)

    monkeypatch.setattr(trainer, "validate", validate)
    trainer.fit()
    assert trainer.curriculum.finished and trainer.curriculum.stage == 2 and trainer.iteration == 6
    assert horizons == [4, 4, 4, 4, 6, 6, 6, 6, 6]  # each stage validates at the next stage's length
    assert sampled == [2, 2, 2, 4, 4, 6]  # and trains at its own
    assert not torch.equal(weights[2][0], weights[4][0])  # training moved the weights between the two bests
    for restored, best in zip(trainer.net.parameters(), weights[4], strict=True):  # stage 1's best, at the end
        assert torch.equal(restored, best)
    assert trainer.best_val == 4.2 and trainer.best_iteration == 4
    best = torch.load(trainer.checkpoint_dir / "best.pt", weights_only=True)["model"]
    for name, value in trainer.net.state_dict().items():
        assert torch.equal(best[name], value)
    # a resume continues the finished curriculum as finished
    payload = torch.load(trainer.checkpoint_dir / "last.pt", weights_only=True)
    assert payload["curriculum"]["finished"] and payload["curriculum"]["stage"] == 2


def test_curriculum_stages_are_checked():
    with pytest.raises(ConfigError, match=r"schedule.stages: must increase from >= schedule.unroll \(20\) to "
                                          r"schedule.num_steps \(1000\), got \[100, 500, 200, 1000\]"):
        CurriculumScheduleConfig(stages=[100, 500, 200, 1000])


def test_curriculum_and_random_scale_from_the_command_line(tmp_path):
    out = run_cli("train", "debug=tiny", "optimizee.dim=3", "optimizer=rnnprop", "train.random_scale=3",
                  "schedule=curriculum", "schedule.stages=[4,8]", "schedule.num_steps=8", "schedule.unroll=2",
                  "schedule.stage_iterations=2", "train.iterations=6", "train.val_every=1", "train.evaluate=false",
                  f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "curriculum: stage 0 (4 steps) ended" in " ".join((out.stdout + out.stderr).split())


# --- the generalisation matrix ------------------------------------------------------------------------------------

def test_generalization_matrix_runs_as_hydra_jobs(tmp_path):
    """Two optimizer types meta-trained on quadratics, each evaluated on the six default tasks (MNIST ones switch
    family) with baselines tuned once per task for the sweep; one matrix whose cells are the jobs' own figures."""
    short = [f"eval.variants.{v}.num_steps={k}" for v, k in (("mnist", 6), ("mnist_relu", 6), ("mnist_2_layers", 6),
                                                               ("mnist_1000_steps", 8), ("quadratic", 6),
                                                               ("quadratic_1000_steps", 8))]
    out = run_cli("train", "-m", "experiment=generalization_matrix", "optimizee=quadratic", "optimizer=lstm,rnnprop",
                  "debug=tiny", "optimizee.dim=4", "optimizee.batch_size=8", "train.iterations=2",
                  "eval.num_functions=8", "eval.val_functions=4", "eval.lr_grid=[0.03,0.3]", "eval.refine_lr=0",
                  *short, f"hydra.sweep.dir={tmp_path}", env={"COLUMNS": "250"}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = " ".join((out.stdout + out.stderr).split())
    assert "generalisation matrix: 2 optimizers x 6 tasks" in text
    rows = list(csv.DictReader(open(tmp_path / "matrix.csv")))
    assert [(r["optimizer"], r["task"]) for r in rows][:2] == [("optimizer=lstm", "mnist"),
                                                               ("optimizer=lstm", "mnist_relu")]
    assert len(rows) == 12 and {r["num_steps"] for r in rows} == {"6", "8"}
    for job, name in (("0", "lstm"), ("1", "rnnprop")):
        for task in ("mnist_relu", "quadratic_1000_steps"):
            results = json.loads((tmp_path / job / "eval" / task / "results.json").read_text())
            assert results["optimizee"]["name"] == task.split("_")[0] and results["studied"] == name
            (row,) = [r for r in rows if r["optimizer"] == f"optimizer={name}" and r["task"] == task]
            figures = results["optimizers"]
            baselines = {n: v for n, v in figures.items() if n != name}
            best_mean = min(v["final_mean"] for v in baselines.values())
            best_median = min(v["final_median"] for v in baselines.values())
            best_log10 = min(v["final_mean_log10"] for v in baselines.values())
            assert float(row["ratio_mean"]) == pytest.approx(figures[name]["final_mean"] / best_mean)
            assert float(row["ratio_median"]) == pytest.approx(figures[name]["final_median"] / best_median)
            assert float(row["log10_gap"]) == pytest.approx(figures[name]["final_mean_log10"] - best_log10)
    # each baseline tuned once per task: the second job read every tuning from the cache, the same learning rates
    assert len(list((tmp_path / "tuning_cache").glob("*.json"))) == 6 * 4
    for task in ("mnist", "quadratic"):
        lrs = [json.loads((tmp_path / job / "eval" / task / "results.json").read_text())["learning_rates"]
               for job in "01"]
        assert lrs[0] == lrs[1]
    assert text.count("from the tuning cache") >= 24
    assert (tmp_path / "matrix_tb").is_dir() and json.loads((tmp_path / "matrix.json").read_text())["rows"]
