"""Baseline tunings and their test curves kept on disk (``eval.tuning_cache``), so that evaluations of several
optimizers on the same task tune and test each baseline once. An entry is found only under a key of everything it
depends on (a test curve: the tuning's key, the learning rate and the number of test functions, which with the
task's data seed fix the test functions); plain JSON, written atomically, so parallel jobs at worst compute the same
entry twice."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

from l2l_cli.core.files import write_text
from l2l_cli.core.schemas import LR_SEARCHES
from l2l_cli.core.user_files import UserFileError, finite_number, read_json, require
from l2l_cli.evaluation.comparison import CurveStats
from l2l_cli.evaluation.tuning import TuningResult

log = logging.getLogger("l2l.eval")


class TuningCache:
    def __init__(self, directory: str | Path, task: dict, baselines: dict):
        """``task``: what the validation problems and the tuning depend on; ``baselines``: name -> config."""
        self.directory = Path(directory)
        self.keys = {}
        for name, cfg in baselines.items():
            record = {**task, "baseline": asdict(cfg), "torch": torch.__version__}
            self.keys[name] = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}-{self.keys[name][:24]}.json"

    def get(self, name: str) -> TuningResult | None:
        """The cached tuning of ``name``, or None (tune it): when there is none, or (with a warning naming the file)
        when the entry is not one ``put`` writes; the next ``put`` replaces it."""
        path = self._path(name)
        if not os.path.lexists(path):
            return None
        try:
            data = read_json(path)
            require(data.get("key") == self.keys[name], path, "its 'key' is not this task's")
            result = _entry(data, name, path)
        except UserFileError as exc:
            log.warning("tuning cache: %s; tuning %s again", exc, name)
            return None
        log.info("%s: learning rate %s from the tuning cache %s", name, result.lr, path)
        return result

    def put(self, name: str, result: TuningResult) -> None:
        payload = {"key": self.keys[name], "lr": result.lr, "grid": result.grid, "search": result.search,
                   "scores": _scores_json(result.scores), "screen": _scores_json(result.screen),
                   "stopped": {str(k): v for k, v in result.stopped.items()}}
        write_text(self._path(name), json.dumps(payload))


    def _test_path(self, name: str, lr: float, functions: int) -> tuple[Path, str]:
        key = hashlib.sha256(json.dumps([self.keys[name], repr(float(lr)), int(functions)]).encode()).hexdigest()
        return self.directory / "test" / f"{name}-{key[:24]}.json", key

    def get_test(self, name: str, lr: float, functions: int) -> CurveStats | None:
        """The test curve of ``name`` at ``lr`` on this task's first ``functions`` test functions, or None (run
        it): none cached, or (a warning naming the file) an entry that is not one ``put_test`` writes."""
        path, key = self._test_path(name, lr, functions)
        if not os.path.lexists(path):
            return None
        try:
            data = read_json(path)
            require(data.get("key") == key, path, "its 'key' is not this test's")
            stats = _curve(data.get("stats"), functions, path)
        except UserFileError as exc:
            log.warning("tuning cache: %s; testing %s again", exc, name)
            return None
        log.info("%s: test curve at lr %s from the tuning cache %s", name, lr, path)
        return stats

    def put_test(self, name: str, lr: float, functions: int, stats: CurveStats) -> None:
        path, key = self._test_path(name, lr, functions)
        fields = {k: ([_finite_or_none(x) for x in v] if isinstance(v, list) else _finite_or_none(v))
                  for k, v in asdict(stats).items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"key": key, "stats": fields}))


CURVES = ("mean", "median", "q10", "q90", "mean_log10")


def _curve(stats, functions: int, path: Path) -> CurveStats:
    """A cached test curve: every per-step list of one length >= 1 holding numbers or null (a statistic of no
    finite run), ``runs`` the test's number of functions and ``nonfinite`` within it; else one line naming the
    file."""
    require(isinstance(stats, dict), path, "its 'stats' is not an object")
    lists = [stats.get(k) for k in CURVES]
    require(all(isinstance(v, list) and len(v) == len(lists[0]) >= 1
                and all(x is None or finite_number(x) for x in v) for v in lists), path,
            f"its {', '.join(CURVES)} are not lists of one length of numbers or null")
    runs, nonfinite, expected = stats.get("runs"), stats.get("nonfinite"), stats.get("final_expected_mean")
    require(type(runs) is int and runs == functions and type(nonfinite) is int and 0 <= nonfinite <= runs, path,
            f"its 'runs' is not {functions} with 'nonfinite' between 0 and it")
    require(expected is None or finite_number(expected), path, "its 'final_expected_mean' is not a number or null")
    nan = float("nan")
    as_floats = {k: [nan if x is None else float(x) for x in v] for k, v in zip(CURVES, lists, strict=True)}
    return CurveStats(**as_floats, nonfinite=nonfinite, runs=runs,
                      final_expected_mean=nan if expected is None else float(expected))


def _finite_or_none(value):
    """JSON has no inf or nan: a non-finite float is written as null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _scores_json(scores: dict) -> dict:
    return {str(k): _finite_or_none(v) for k, v in scores.items()}


def _entry(data: dict, name: str, path: Path) -> TuningResult:
    """A cache entry's tuning: ``lr`` a positive finite number, ``grid`` a list of them, ``scores`` and ``screen``
    objects of learning rate -> validation score (null: diverged), ``stopped`` of learning rate -> text; else one
    line naming the file."""
    lr, grid, search, stopped = data.get("lr"), data.get("grid"), data.get("search"), data.get("stopped", {})
    require(_rate(lr), path, "its 'lr' is not a positive number")
    require(isinstance(grid, list) and all(_rate(g) for g in grid), path, "its 'grid' is not a list of positive "
            "numbers")
    require(search in LR_SEARCHES, path, f"its 'search' is not one of {', '.join(LR_SEARCHES)}")
    require(isinstance(stopped, dict) and all(_rate(_float(k)) and isinstance(v, str) for k, v in stopped.items()),
            path, "its 'stopped' is not an object of learning rate -> text")
    return TuningResult(name, float(lr), _scores(data, "scores", path), grid=[float(g) for g in grid], search=search,
                        screen=_scores(data, "screen", path), stopped={_float(k): v for k, v in stopped.items()})


def _scores(data: dict, key: str, path: Path) -> dict:
    scores = data.get(key, {})
    require(isinstance(scores, dict) and all(_rate(_float(k)) and (v is None or finite_number(v))
                                             for k, v in scores.items()), path,
            f"its '{key}' is not an object of learning rate -> finite number or null")
    return {_float(k): (math.inf if v is None else float(v)) for k, v in scores.items()}


def _rate(value) -> bool:
    return finite_number(value) and value > 0


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None

