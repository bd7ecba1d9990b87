"""Honest comparison: baselines' learning rates tuned on validation functions, every optimizer on the same test
functions, per-step statistics that keep non-finite runs visible instead of averaging them away."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from l2l_cli.evaluation.lr_search import search_learning_rates
from l2l_cli.evaluation.rollout import final_params, run
from l2l_cli.evaluation.tuning import TuningResult, tune_learning_rate
from l2l_cli.optimizers.baselines import BaselineConfig, build_baseline

log = logging.getLogger("l2l.eval")


@dataclass
class CurveStats:
    mean: List[float]
    median: List[float]
    q10: List[float]
    q90: List[float]
    nonfinite: int  # runs whose loss became inf/nan; statistics are over the finite runs, and this count is reported
    runs: int
    # mean over the finite runs of the expected final loss (every image a function draws from; see selection_score)
    final_expected_mean: float = float("nan")
    # per step, the mean of log10 loss over the finite runs (the log of the geometric mean: heavy-tailed losses make
    # the arithmetic mean alone misleading); losses floored at LOG10_FLOOR
    mean_log10: List[float] = field(default_factory=list)

    @property
    def final_mean_log10(self) -> float:
        return self.mean_log10[-1] if self.mean_log10 else float("nan")

    @property
    def final_mean(self) -> float:
        return self.mean[-1]

    @property
    def final_median(self) -> float:
        return self.median[-1]


def curve_stats(losses: torch.Tensor, final_expected: Optional[torch.Tensor] = None) -> CurveStats:
    """losses (T+1, B) -> per-step mean / median / 10% / 90% over the runs that stayed finite throughout."""
    finite_runs = torch.isfinite(losses).all(dim=0)
    kept = losses[:, finite_runs].double()
    if kept.shape[1] == 0:
        nan = [float("nan")] * losses.shape[0]
        return CurveStats(nan, nan, nan, nan, nonfinite=losses.shape[1], runs=losses.shape[1], mean_log10=nan)
    q = torch.quantile(kept, torch.tensor([0.1, 0.5, 0.9], dtype=kept.dtype), dim=1)
    expected = float("nan") if final_expected is None else float(final_expected[finite_runs].double().mean())
    return CurveStats(mean=kept.mean(1).tolist(), median=q[1].tolist(), q10=q[0].tolist(), q90=q[2].tolist(),
                      nonfinite=int((~finite_runs).sum()), runs=losses.shape[1], final_expected_mean=expected,
                      mean_log10=kept.clamp_min(LOG10_FLOOR).log10().mean(1).tolist())


LOG10_FLOOR = 1e-30  # a loss of exactly 0 counts as 1e-30 in the mean of log10


def compare(family, test_problem, rules: dict, num_steps: int, on_done=None, known=None) -> Dict[str, CurveStats]:
    """Every optimizer on the same test problems (same W, y, theta_0, data). ``known``: name -> the curve an
    optimizer already has on these problems (a baseline's from the tuning cache), used instead of running it."""
    results = {}
    for name, rule in rules.items():
        found = known(name) if known else None
        results[name] = found if found is not None else curve_stats(*run(family, test_problem, rule, num_steps))
        if on_done:
            on_done(name)
    return results


def ratio(value: float, reference: float) -> float:
    """value / reference, where a reference of exactly 0 (a baseline that reached the minimum) gives inf for any
    worse value and 1 for an equal one, never a ZeroDivisionError."""
    if reference == 0:
        return 1.0 if value == 0 else (math.inf if value > 0 else math.nan)
    return value / reference


def best_baseline(stats: Dict[str, CurveStats], learned) -> Optional[str]:
    """The baseline with the lowest final mean loss among those none of whose runs diverged; None (and a warning)
    when every baseline diverged: no baseline is then starred or compared with. ``learned``: the name, or names, of
    the learned optimizers among ``stats``."""
    learned = {learned} if isinstance(learned, str) or learned is None else set(learned)
    baselines = [n for n in stats if n not in learned]
    candidates = {n: stats[n].final_mean for n in baselines
                  if stats[n].nonfinite == 0 and math.isfinite(stats[n].final_mean)}
    if baselines and not candidates:
        log.warning("every baseline (%s) diverged on some test function: none is the best baseline and no ratio is "
                    "given; look at eval.lr_grid", ", ".join(baselines))
    return min(candidates, key=candidates.get) if candidates else None


@dataclass
class Evaluation:
    """One task's comparison, from which results.json, the table and the curves are written."""

    studied: str  # the optimizer under study (a learned one, or a baseline evaluated on its own terms)
    learned: Optional[str]  # the learned optimizer's name, when one is compared
    num_steps: int
    num_validation_functions: int
    num_test_functions: int
    tuning: Dict[str, TuningResult]  # every baseline: its learning rate, tuned or fixed
    stats: Dict[str, CurveStats]  # every optimizer, studied first
    best_baseline: Optional[str]
    rules: Dict[str, object] = field(default_factory=dict)  # every optimizer as it ran (baselines at their lr)
    also: List[str] = field(default_factory=list)  # other learned optimizers run alongside (eval.compare)


def evaluate_task(family, val_problem, test_problem, num_steps: int, baselines: Dict[str, BaselineConfig],
                  grid: List[float], refine: int, learned: Optional[tuple] = None, also: Optional[dict] = None,
                  on_tuned: Callable[[str, TuningResult], None] = lambda name, result: None,
                  on_test_start: Callable[[], None] = lambda: None,
                  on_tested: Callable[[str], None] = lambda name: None, tuning_cache=None,
                  search: str = "staged") -> Evaluation:
    """Tune each baseline whose lr is null on the validation problems, then run the learned optimizer (``learned``:
    (name, rule)), the other learned optimizers of ``also`` (name -> rule) and every baseline on the same test
    problems. ``baselines``: name -> config, the studied one first when a baseline is studied. ``tuning_cache``:
    anything with ``get(name) -> TuningResult | None`` and ``put(name, result)`` for this task's validation
    problems, so that optimizers evaluated on the same task share one tuning of each baseline (and, where it has
    ``get_test(name, lr, functions)`` / ``put_test``, one test curve of each at its learning rate). ``search``:
    "staged" (lr_search.py) or "grid" (every value of ``grid``, then ``refine`` rounds)."""
    rules, tuning = {}, {}
    if learned is not None:
        rules[learned[0]] = learned[1]
    also = dict(also or {})
    to_tune = {}
    for name, cfg in baselines.items():
        if cfg.lr is not None:
            tuning[name] = TuningResult(name, cfg.lr, {}, tuned=False)
        elif tuning_cache is not None and (cached := tuning_cache.get(name)) is not None:
            tuning[name] = cached
            on_tuned(name, cached)
        else:
            to_tune[name] = cfg

    def tuned(name: str, result: TuningResult) -> None:
        tuning[name] = result
        if tuning_cache is not None:
            tuning_cache.put(name, result)
        on_tuned(name, result)

    if search == "staged":
        found = search_learning_rates(family, val_problem, to_tune, grid, num_steps, refine).items() if to_tune else ()
    else:  # one baseline at a time, each reported as it is tuned
        found = ((name, tune_learning_rate(family, val_problem, cfg, grid, num_steps, refine))
                 for name, cfg in to_tune.items())
    for name, result in found:
        tuned(name, result)
    rules.update({name: build_baseline(cfg, tuning[name].lr) for name, cfg in baselines.items()})
    studied = next(iter(rules))
    rules = {studied: rules[studied], **also, **{n: r for n, r in rules.items() if n != studied}}
    on_test_start()
    tests = tuning_cache if hasattr(tuning_cache, "get_test") else None
    known = {} if tests is None else {
        name: found for name in baselines
        if (found := tests.get_test(name, tuning[name].lr, len(test_problem))) is not None}
    stats = compare(family, test_problem, rules, num_steps, on_done=on_tested, known=known.get)
    for name in baselines:
        if tests is not None and name not in known:
            tests.put_test(name, tuning[name].lr, len(test_problem), stats[name])
    learned_name = learned[0] if learned is not None else None
    return Evaluation(studied=studied, learned=learned_name, num_steps=num_steps,
                      num_validation_functions=len(val_problem), num_test_functions=len(test_problem),
                      tuning=tuning, stats=stats, best_baseline=best_baseline(stats, [learned_name, *also]),
                      rules=rules, also=list(also))


PICTURED_FUNCTIONS = 4


def final_pictures(family, test_problem, rules: dict, num_steps: int,
                   count: int = PICTURED_FUNCTIONS) -> Optional[Dict[str, torch.Tensor]]:
    """For families whose parameters are pictures (``family.pictures``): the columns of an image grid for the first
    ``count`` test functions, each optimizer of ``rules`` at its final step between the family's own columns (the
    content and style images of Neural Art). None for other families."""
    if not hasattr(family, "pictures"):
        return None
    shown = family.select(test_problem, 0, min(count, len(test_problem)))
    return family.pictures(shown, {name: final_params(family, shown, rule, num_steps) for name, rule in rules.items()})
