"""The baselines' learning-rate search (``eval.lr_search=staged``, the default): the work goes where the optimum is.

1. screen: every other value of ``eval.lr_grid`` (whole decades of the default half-decade grid) on the first
   quarter of the validation functions (at least ``SCREEN_FUNCTIONS``);
2. the best screened value and the grid values beside it, on every validation function;
3. ``eval.refine_lr`` rounds around the best, as the full grid's refinement does.

Each stage's (baseline, learning rate) candidates run together: one batched computation holds candidates x
functions rows, as many as the family runs well at once (``rollout.chunk_functions``), each row exactly the run it
would be alone (baselines are elementwise). A candidate stops as soon as it has clearly diverged (a non-finite loss,
or a mean loss ``DIVERGED`` times the start's) or fallen far behind (half-way, a mean loss ``BEHIND`` times that of
another learning rate of its baseline in the same computation): its score is then +inf, as a diverged run's is in
the full grid, and ``TuningResult.stopped`` says why. ``eval.lr_search=grid`` tunes on the whole grid one value at a
time without stopping: the reference this search is checked against (docs/performance.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

from l2l_cli.core.spare_cores import take_spare_cores
from l2l_cli.evaluation.rollout import chunk_functions
from l2l_cli.evaluation.tuning import TuningResult, best_rate, refinement_factor
from l2l_cli.optimizees.base import Family, loss_and_grad
from l2l_cli.optimizers.baselines import BaselineConfig, build_baseline

SCREEN_FUNCTIONS = 8
DIVERGED = 1e3  # x the mean loss at theta_0: no learning rate that gets there is chosen
BEHIND = 10.0  # x the best mean loss of the same baseline's candidates, half-way: a gap no run closes in the rest
CHECK_AT = 0.5  # the fraction of the run after which a candidate is tested for having fallen behind


@dataclass(frozen=True)
class Candidate:
    baseline: str
    lr: float


@dataclass
class Outcome:
    score: float  # mean expected final loss over the functions; +inf when stopped or diverged
    stopped: str = ""  # why it stopped early ("diverged at step t", "behind at step t"), or ""


def search_learning_rates(family: Family, problem, configs: Dict[str, BaselineConfig], grid: Sequence[float],
                          num_steps: int, refine: int = 0) -> Dict[str, TuningResult]:
    """Each baseline of ``configs`` (name -> config) tuned on ``problem`` (the validation functions)."""
    grid = sorted({float(lr) for lr in grid})
    results = {name: TuningResult(name, math.nan, {}, grid=list(grid), search="staged") for name in configs}
    screened = _screen_size(len(problem))
    coarse = grid[::2] + ([grid[-1]] if (len(grid) - 1) % 2 else [])
    screen_problem = family.select(problem, 0, screened) if screened < len(problem) else problem
    _record(results, score_candidates(family, screen_problem, configs,
                                      [Candidate(n, lr) for n in configs for lr in coarse], num_steps),
            screen=screened < len(problem))
    stage: List[Candidate] = []
    for name, result in results.items():
        best = best_rate(result.screen or result.scores)
        i = grid.index(best)
        stage += [Candidate(name, lr) for lr in [best] + grid[max(0, i - 1):i] + grid[i + 1:i + 2]
                  if lr not in result.scores]
    _record(results, score_candidates(family, problem, configs, stage, num_steps))
    for level in range(refine):
        factor = refinement_factor(level)
        stage = [Candidate(name, lr) for name, result in results.items()
                 for lr in (best_rate(result.scores) / factor, best_rate(result.scores) * factor)
                 if lr not in result.scores]
        _record(results, score_candidates(family, problem, configs, stage, num_steps))
    for result in results.values():
        result.lr = best_rate(result.scores)
    return results


def _screen_size(n: int) -> int:
    return min(n, max(SCREEN_FUNCTIONS, math.ceil(n / 4)))


def _record(results: Dict[str, TuningResult], outcomes: Dict[Candidate, Outcome], screen: bool = False) -> None:
    """Each outcome into its baseline's scores (``screen``: its screening scores) and, when it stopped, why."""
    for cand, outcome in outcomes.items():
        (results[cand.baseline].screen if screen else results[cand.baseline].scores)[cand.lr] = outcome.score
        if outcome.stopped:
            results[cand.baseline].stopped[cand.lr] = outcome.stopped


def score_candidates(family: Family, problem, configs: Dict[str, BaselineConfig], candidates: List[Candidate],
                     num_steps: int) -> Dict[Candidate, Outcome]:
    """Every candidate's selection score on ``problem`` (``rollout.selection_score``'s: the mean expected final
    loss, +inf where a run diverged), candidates x functions rows at a time; a candidate stopped in one part of the
    functions is not run on the rest."""
    n = len(problem)
    if not candidates or n == 0:
        return {}
    rows = chunk_functions(family)
    totals = {cand: 0.0 for cand in candidates}
    stopped: Dict[Candidate, str] = {}
    # a computation: the candidates of one or more baselines on consecutive functions, rows bounded by ``rows``
    groups: Dict[str, List[Candidate]] = {}
    for cand in candidates:
        groups.setdefault(cand.baseline, []).append(cand)
    if len(candidates) * n <= rows:
        batches = [(candidates, 0, n)]
    else:
        batches = []
        for group in groups.values():
            for first in range(0, len(group), rows):
                part = group[first:first + rows]
                per = max(1, rows // len(part))
                batches += [(part, start, min(n, start + per)) for start in range(0, n, per)]
    for group, start, stop in batches:
        running = [cand for cand in group if cand not in stopped]
        if not running:
            continue
        part = family.select(problem, start, stop) if (start, stop) != (0, n) else problem
        finals, why = _run_together(family, part, [build_baseline(configs[c.baseline], c.lr) for c in running],
                                    [c.baseline for c in running], num_steps)
        for cand, final, reason in zip(running, finals, why, strict=True):
            if reason:
                stopped[cand] = reason
            else:
                totals[cand] += final
    return {cand: Outcome(math.inf, stopped[cand]) if cand in stopped else
            Outcome(totals[cand] / n if math.isfinite(totals[cand]) else math.inf) for cand in candidates}


@torch.no_grad()
def _run_together(family: Family, problem, rules: list, baselines: List[str], num_steps: int):
    """Run every rule on every function of ``problem`` in one batch (row k * n + b: rule k on function b), dropping
    rules as they stop; (each rule's sum of expected final losses over the functions, each rule's reason to stop or
    "")."""
    take_spare_cores()
    n, count = len(problem), len(rules)
    active = list(range(count))
    why = [""] * count
    finals = [math.inf] * count
    batch = family.repeat(problem, count)
    theta = family.initial_params(batch)
    states = [rule.init_state(theta[k * n:(k + 1) * n]) for k, rule in enumerate(rules)]
    losses, grad = loss_and_grad(family, batch, theta, 0)
    start = float(losses[:n].mean())
    check_step = max(1, int(num_steps * CHECK_AT))
    for t in range(num_steps):
        updates = []
        for i, k in enumerate(active):
            update, states[k] = rules[k].step(grad[i * n:(i + 1) * n], states[k], t)
            updates.append(update)
        theta = theta + torch.cat(updates)
        losses, grad = loss_and_grad(family, batch, theta, t + 1)
        per_rule = losses.view(len(active), n)
        means = per_rule.mean(1).tolist()
        keep = []
        for i, k in enumerate(active):
            if not math.isfinite(means[i]) or (start > 0 and means[i] > DIVERGED * start):
                why[k] = f"diverged at step {t + 1}"
            elif t + 1 == check_step and _behind(means, i, [baselines[j] for j in active]):
                why[k] = f"behind at step {t + 1}"
            else:
                keep.append(i)
        if len(keep) < len(active):
            if not keep:
                return finals, why
            rows = torch.tensor(keep)
            theta = theta.view(len(active), n, -1)[rows].reshape(len(keep) * n, -1)
            grad = grad.view(len(active), n, -1)[rows].reshape(len(keep) * n, -1)
            active = [active[i] for i in keep]
            batch = family.repeat(problem, len(active))
    final = family.expected_loss(batch, theta).view(len(active), n)
    for i, k in enumerate(active):
        finals[k] = float(final[i].double().sum()) if torch.isfinite(final[i]).all() else math.inf
    return finals, why


def _behind(means: List[float], i: int, baselines: List[str]) -> bool:
    """Candidate i's mean loss is BEHIND times the best of its baseline's other candidates (all positive)."""
    rivals = [m for j, m in enumerate(means) if baselines[j] == baselines[i] and j != i and math.isfinite(m)]
    leader = min(rivals, default=math.nan)
    return leader > 0 and means[i] > BEHIND * leader
