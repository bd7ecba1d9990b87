"""Finding and reading finished runs on disk: sweep jobs, train runs, eval runs (used by sweep summaries and
`l2l plot`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from l2l_cli.evaluation.comparison import ratio


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
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_overrides(run_dir: Path) -> dict:
    """key -> value from Hydra's .hydra/overrides.yaml, values parsed as YAML scalars (1e-3 -> float)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    overrides = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        overrides[key.lstrip("+~")] = parsed if isinstance(parsed, (int, float, str, bool)) else str(parsed)
    return overrides


def _is_eval_results(data: dict | None) -> bool:
    return bool(data) and "optimizers" in data and "studied" in data


def read_run(run_dir: Path, label: str) -> RunRecord | None:
    """A run dir: a train job (metrics.json, maybe eval/), an eval (results.json) or a failed job (error.json)."""
    metrics = _read_json(run_dir / "metrics.json")
    results = _read_json(run_dir / "results.json")
    error = _read_json(run_dir / "error.json")
    if metrics is None and not _is_eval_results(results) and error is None:
        if not (run_dir / ".hydra").is_dir():
            return None
        return RunRecord(run_dir, label, read_overrides(run_dir), status="incomplete")
    record = RunRecord(run_dir, label, read_overrides(run_dir))
    if error is not None:
        record.status, record.error = "failed", error.get("error")
    if metrics is not None:
        record.val_best = float(metrics.get("val_best", math.nan))
        record.improved = metrics.get("improved")
        eval_results = _read_json(run_dir / "eval" / "results.json")
        record.results = eval_results if _is_eval_results(eval_results) else None
    elif _is_eval_results(results):
        record.results = results
        record.improved = (results.get("learned") or {}).get("improved")
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
