"""The generalisation matrix of a sweep (``experiment=generalization_matrix``): rows = the sweep's meta-trained
optimizers, columns = the test tasks each was evaluated on (``eval.variants``, baselines re-tuned per task), cells =
the learned optimizer against the best tuned baseline of that task on three figures: mean final test loss (ratio),
median (ratio) and mean log10 (difference, in decades)."""

from __future__ import annotations

import math

from l2l_cli.evaluation.comparison import ratio
from l2l_cli.reporting.run_records import RunRecord
from l2l_cli.reporting.run_records import _read_json as _read

FIGURES = (("final_mean", "ratio_mean"), ("final_median", "ratio_median"), ("final_mean_log10", "log10_gap"))


def task_cell(results: dict, name: str | None = None) -> dict:
    """One task's cell from its results.json: the studied optimizer's figures (or those of ``name``, a compared
    one), each against the best of the tuned baselines on that figure (compared learned optimizers are not
    baselines)."""
    optimizers, studied = results["optimizers"], results["studied"]
    baselines = {n: v for n, v in optimizers.items() if n != studied and n not in (results.get("compared") or {})}
    cell = {"num_steps": results["num_steps"]}
    for figure, key in FIGURES:
        learned = optimizers[name or studied][figure]
        finite = {n: v[figure] for n, v in baselines.items() if math.isfinite(v[figure])}
        best = min(finite, key=finite.get) if finite else None
        reference = finite[best] if best else math.nan
        cell[figure] = learned
        cell[f"best_{figure}"] = [best, reference]
        cell[key] = learned - reference if figure == "final_mean_log10" else ratio(learned, reference)
    return cell


def matrix_cells(record: RunRecord) -> dict | None:
    """variant -> cell for a train job evaluated on several variants; None for any other run."""
    study = _read(record.path / "eval" / "results.json")
    if record.status != "ok" or not study or "variants" not in study:
        return None
    cells = {}
    for variant in study["variants"]:
        results = _read(record.path / "eval" / variant / "results.json")
        if results and "optimizers" in results:
            cells[variant] = task_cell(results)
    return cells or None


def collect_matrix(records: list[RunRecord]) -> dict:
    """row label -> variant -> cell, in the sweep's job order; a row is named by the overrides that differ between
    the rows (``optimizer=rnnprop train.random_scale=3``), else by its job."""
    found = [(r, cells) for r in sorted(records, key=lambda r: (len(r.label), r.label))
             if (cells := matrix_cells(r)) is not None]
    keys = list(dict.fromkeys(k for r, _ in found for k in r.overrides))
    varying = [k for k in keys if len({str(r.overrides.get(k)) for r, _ in found}) > 1]
    rows = {}
    for record, cells in found:
        label = " ".join(f"{k}={record.overrides.get(k, '')}" for k in varying) or record.label
        rows[label if label not in rows else f"{label} ({record.label})"] = cells
    return rows


def best_rows(rows: dict) -> dict:
    """variant -> the row with the lowest mean ratio (the one shown in bold)."""
    variants = {v for cells in rows.values() for v in cells}
    best = {}
    for variant in variants:
        scored = {r: cells[variant]["ratio_mean"] for r, cells in rows.items()
                  if variant in cells and math.isfinite(cells[variant]["ratio_mean"])}
        if scored:
            best[variant] = min(scored, key=scored.get)
    return best
