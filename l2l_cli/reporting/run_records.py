"""Finding and reading finished runs on disk: sweep jobs, train runs, eval runs (used by sweep summaries and
`l2l plot`)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from l2l_cli.core.user_files import UserFileError, is_number, lookup, read_json, read_yaml, require
from l2l_cli.evaluation.comparison import ratio

log = logging.getLogger("l2l.records")


@dataclass
class RunRecord:
    path: Path
    label: str
    overrides: dict = field(default_factory=dict)
    status: str = "ok"  # ok | failed | incomplete
    error: str | None = None
    val_best: float = math.nan  # the validation metric a sweep optimises (train runs)
    results: dict | None = None  # an eval's results.json (train runs: their eval/ subdir)
    improved: bool | None = None  # False: meta-training left the optimizer no better than untrained

    @property
    def learned(self) -> str | None:
        return self.results.get("studied") if self.results else None

    def test_final(self, name: str | None = None) -> float:
        if not self.results:
            return math.nan
        name = name or self.results["studied"]
        return self.results["optimizers"][name]["final_mean"]

    @property
    def best_baseline(self) -> str | None:
        return self.results.get("best_baseline") if self.results else None

    @property
    def sort_key(self) -> tuple:
        val = self.val_best if math.isfinite(self.val_best) else math.inf
        test = self.test_final()
        return (self.status != "ok", val, test if math.isfinite(test) else math.inf, self.label)


def _read_json(path: Path) -> dict | None:
    """A run record's JSON object; None when the file is absent, or (with a warning naming it and why) when it is
    not one its readers can use (an eval's results.json is checked as ``results_problem`` says): a broken record is
    left out, never a crash of the summary, plot or matrix reading it."""
    if not os.path.lexists(path):
        return None
    try:
        data = read_json(path)
        problem = results_problem(data) if "optimizers" in data and "studied" in data else None
        require(problem is None, path, problem or "")
        require(isinstance(data.get("variants", {}), dict), path, "its 'variants' is not an object")
    except UserFileError as exc:
        log.warning("%s; left out", exc)
        return None
    return data


def read_overrides(run_dir: Path) -> dict:
    """key -> value from Hydra's .hydra/overrides.yaml, values parsed as YAML scalars (1e-3 -> float); an unreadable
    file (a warning names it) gives none."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not os.path.lexists(path):
        return {}
    try:
        items = read_yaml(path)
        require(items is None or isinstance(items, list), path, "not a list of key=value overrides")
    except UserFileError as exc:
        log.warning("%s; its overrides are left out", exc)
        return {}
    overrides = {}
    for item in items or []:
        if not isinstance(item, str):
            continue
        key, _, value = item.partition("=")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        parsed = _scalar(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        overrides[key.lstrip("+~")] = parsed if isinstance(parsed, (int, float, str, bool)) else str(parsed)
    return overrides


def _scalar(value: str):
    """An override's value as YAML reads it; the text itself where YAML fails (any error: a bad date, a nesting
    deeper than its parser) or where aliases could make its text exponentially long (``*``)."""
    if "*" in value:
        return value
    try:
        return yaml.safe_load(value)
    except Exception:  # noqa: BLE001 - a label, not worth failing over
        return value


FIGURES = ("final_mean", "final_median", "final_mean_log10")  # what summaries, plots and the matrix compare


def results_problem(data: dict) -> str | None:
    """What keeps ``data`` from being an eval's results.json as its readers use it (`l2l plot`, sweep summaries,
    the matrix): the studied optimizer and best baseline among ``optimizers``, each with numeric figures and mean
    curve; None when nothing does."""
    optimizers, studied = data.get("optimizers"), data.get("studied")
    if not isinstance(optimizers, dict) or not isinstance(studied, str) or studied not in optimizers:
        return "its 'optimizers' is not an object holding its 'studied' optimizer"
    for name, figures in optimizers.items():
        if not isinstance(figures, dict) or not all(is_number(figures.get(f)) for f in FIGURES):
            return f"optimizers[{name!r}] lacks a number for one of {', '.join(FIGURES)}"
        if not isinstance(figures.get("mean"), list) or not all(is_number(v) for v in figures["mean"]):
            return f"optimizers[{name!r}].mean is not a list of numbers"
    best = data.get("best_baseline")
    if best is not None and (not isinstance(best, str) or best not in optimizers):
        return "its 'best_baseline' is not one of its optimizers"
    if not isinstance(data.get("num_steps"), int) or isinstance(data["num_steps"], bool):
        return "its 'num_steps' is not an integer"
    for key in ("learned", "compared", "seeds"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"its {key!r} is not an object"
    if lookup(data, "learned.improved", object) not in (None, True, False):
        return "its learned.improved is not true/false"
    return None


def _is_eval_results(data: dict | None) -> bool:
    return bool(data) and "optimizers" in data and "studied" in data and results_problem(data) is None


def read_run(run_dir: Path, label: str) -> RunRecord | None:
    """A run dir: a train job (metrics.json, maybe eval/), an eval (results.json) or a failed job (error.json).
    A record that is not what l2l writes is left out with a warning naming it."""
    metrics = _read_json(run_dir / "metrics.json")
    results = _read_json(run_dir / "results.json")
    error = _read_json(run_dir / "error.json")
    if metrics is None and not _is_eval_results(results) and error is None:
        if not (run_dir / ".hydra").is_dir():
            return None
        return RunRecord(run_dir, label, read_overrides(run_dir), status="incomplete")
    record = RunRecord(run_dir, label, read_overrides(run_dir))
    if error is not None:
        record.status, record.error = "failed", str(lookup(error, "error", str, "unknown error"))
    if metrics is not None:
        record.val_best = float(lookup(metrics, "val_best", (int, float), math.nan))
        record.improved = lookup(metrics, "improved", bool)
        eval_results = _read_json(run_dir / "eval" / "results.json")
        record.results = eval_results if _is_eval_results(eval_results) else None
    elif _is_eval_results(results):
        record.results = results
        record.improved = lookup(results, "learned.improved", bool)
    return record


def collect_runs(roots: list[Path]) -> list[RunRecord]:
    """Every run at or below the given directories, sorted best first (by validation metric, then test loss)."""
    records, seen = [], set()
    for root in roots:
        root = root.resolve()
        candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
        for run_dir in candidates:
            if any(parent in seen for parent in run_dir.parents) or run_dir.name in (".hydra", "tb", "checkpoints"):
                continue
            label = run_dir.name if run_dir == root else str(run_dir.relative_to(root))
            if len(roots) > 1:
                label = f"{root.name}/{label}" if run_dir != root else root.name
            record = read_run(run_dir, label)
            if record is not None:
                records.append(record)
                seen.add(run_dir)
    return sorted(records, key=lambda r: r.sort_key)


def metrics_of(record: RunRecord) -> dict:
    """The figures a comparison of runs shows: validation, test, and the ratio to the run's best baseline."""
    metrics = {"val/best": record.val_best, "test/final_mean": record.test_final()}
    if record.best_baseline:
        baseline = record.test_final(record.best_baseline)
        metrics["test/best_baseline_final_mean"] = baseline
        metrics["test/ratio_to_best_baseline"] = ratio(record.test_final(), baseline)
    return metrics
