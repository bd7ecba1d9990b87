"""The staged learning-rate search (evaluation/lr_search.py): what it chooses against the full grid, its batched
scores against separate runs, and its early stops."""

from __future__ import annotations

import math

import pytest
import torch

from l2l_cli.core.random_streams import generator
from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.evaluation import lr_search, rollout
from l2l_cli.evaluation.lr_search import Candidate, score_candidates, search_learning_rates
from l2l_cli.evaluation.rollout import selection_score
from l2l_cli.evaluation.tuning import tune_learning_rate
from l2l_cli.optimizees.quadratic import QuadraticConfig, QuadraticFamily
from l2l_cli.optimizers.baselines import baseline_config, build_baseline

GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]
BASELINES = ("sgd", "nag", "rmsprop", "adam")


class Counting:
    """A family that counts the function-steps its loss is asked for (rows x calls): the work a search does."""

    def __init__(self, family):
        self.family, self.rows = family, 0

    def __getattr__(self, name):
        return getattr(self.family, name)

    def analytic_loss_and_grad(self, problem, theta, step):
        self.rows += theta.shape[0]
        return self.family.analytic_loss_and_grad(problem, theta, step)


def quadratics(n=32, steps=20):
    family = Counting(QuadraticFamily(QuadraticConfig(dim=5)))
    return family, family.sample(n, steps, generator(0, "validation"))


def test_the_staged_search_chooses_what_the_full_grid_chooses_for_less_work():
    family, problem = quadratics()
    configs = {name: baseline_config(name) for name in BASELINES}
    staged = search_learning_rates(family, problem, configs, GRID, 20, refine=2)
    staged_work, family.rows = family.rows, 0
    for name in BASELINES:
        full = tune_learning_rate(family, problem, configs[name], GRID, 20, refine=2)
        assert staged[name].search == "staged" and full.search == "grid"
        # within one half-decade grid step of the full grid's choice (the bar), and its score as good
        assert abs(math.log10(staged[name].lr / full.lr)) <= 0.5 + 1e-9, (name, staged[name].lr, full.lr)
        assert staged[name].scores[staged[name].lr] <= 1.02 * full.scores[full.lr]
    assert staged_work < 0.6 * family.rows, (staged_work, family.rows)


def test_the_stages_try_the_coarse_values_then_the_best_and_its_neighbours_then_refine():
    family, problem = quadratics(n=64)
    result = search_learning_rates(family, problem, {"adam": baseline_config("adam")}, GRID, 20, refine=2)["adam"]
    assert sorted(result.screen) == GRID[::2]  # whole decades, on the screening functions
    best_screened = min(result.screen, key=lambda lr: (result.screen[lr], lr))
    i = GRID.index(best_screened)
    assert set(GRID[max(0, i - 1):i + 2]) <= set(result.scores)
    assert len(result.scores) == len(set(GRID[max(0, i - 1):i + 2])) + 4  # and two rounds of two refinements
    assert result.lr == min(result.scores, key=lambda lr: (result.scores[lr], lr))


def test_batched_scores_are_the_separate_runs_scores(monkeypatch):
    monkeypatch.setattr(lr_search, "BEHIND", math.inf)  # nothing stops: every score is a whole run's
    family, problem = quadratics(n=6)
    configs = {name: baseline_config(name) for name in BASELINES}
    candidates = [Candidate(name, lr) for name in BASELINES for lr in (1e-3, 3e-3, 1e-2)]
    scores = score_candidates(family, problem, configs, candidates, 15)
    for cand in candidates:
        alone = selection_score(family, problem, build_baseline(configs[cand.baseline], cand.lr), 15)
        assert scores[cand].score == pytest.approx(alone, rel=1e-5) and not scores[cand].stopped
    # in parts of 4 rows (one candidate at a time, functions in parts) the scores are the same
    monkeypatch.setattr(rollout, "EVAL_COORDINATES", 4 * family.num_params)
    parted = score_candidates(family, problem, configs, candidates, 15)
    for cand in candidates:
        assert parted[cand].score == pytest.approx(scores[cand].score, rel=1e-5)


def test_batched_scores_on_a_family_with_minibatches_are_the_separate_runs():
    entry = OPTIMIZEES.get("mnist")
    family = entry.build(entry.tiny_config())
    problem = family.sample(3, 6, generator(0, "validation"), split="validation")
    configs = {"nag": baseline_config("nag")}
    candidates = [Candidate("nag", lr) for lr in (0.1, 1.0)]
    scores = score_candidates(family, problem, configs, candidates, 6)
    for cand in candidates:
        alone = selection_score(family, problem, build_baseline(configs["nag"], cand.lr), 6)
        assert scores[cand].score == pytest.approx(alone, rel=1e-5)


def test_a_diverging_candidate_stops_at_once_and_scores_inf():
    family, problem = quadratics(n=8)
    configs = {"sgd": baseline_config("sgd")}
    candidates = [Candidate("sgd", 0.01), Candidate("sgd", 100.0)]
    scores = score_candidates(family, problem, configs, candidates, 20)
    assert scores[candidates[1]].score == math.inf
    step = int(scores[candidates[1]].stopped.removeprefix("diverged at step "))
    assert step < 5
    assert math.isfinite(scores[candidates[0]].score) and not scores[candidates[0]].stopped
    assert family.rows == 8 * 21 + 8 * (step + 1)  # the diverged run did not go on past its step


def test_a_candidate_far_behind_stops_half_way(monkeypatch):
    monkeypatch.setattr(lr_search, "BEHIND", 2.0)  # these quadratics' losses fall about 2x in 10 steps, not 10x
    family, problem = quadratics(n=8)
    configs = {"sgd": baseline_config("sgd")}
    slow, good = Candidate("sgd", 1e-6), Candidate("sgd", 0.02)
    scores = score_candidates(family, problem, configs, [slow, good], 20)
    assert scores[slow].stopped == "behind at step 10" and scores[slow].score == math.inf
    assert not scores[good].stopped and math.isfinite(scores[good].score)
    # a rival of another baseline is no reason to stop: each baseline's rates are compared among themselves
    configs["adam"] = baseline_config("adam")
    alone = score_candidates(family, problem, configs, [slow, Candidate("adam", 0.1)], 20)
    assert not alone[slow].stopped and math.isfinite(alone[slow].score)


def test_every_rate_diverging_still_gives_a_tuning():
    family, problem = quadratics(n=8)
    result = search_learning_rates(family, problem, {"sgd": baseline_config("sgd")}, [100.0, 1000.0], 10)["sgd"]
    assert result.lr == 100.0 and all(s == math.inf for s in result.scores.values())
    assert all(reason.startswith("diverged") for reason in result.stopped.values())
    assert torch.isfinite(torch.tensor(result.lr))
