"""After a multirun: one summary of every job (overrides, metric, status, error), failed jobs included."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from l2l_cli.cli.console import fmt, matrix_cell_text, matrix_table, runs_table, seeds_table, show
from l2l_cli.reporting.matrix import best_rows, collect_matrix
from l2l_cli.reporting.run_records import RunRecord, collect_runs
from l2l_cli.reporting.seed_stats import over_seeds, seed_groups
from l2l_cli.reporting.writers import write_csv, write_json, write_matrix_tensorboard

log = logging.getLogger("l2l.sweep")


def summary_rows(records: list[RunRecord]) -> list[dict]:
    return [{"job": r.label, "status": r.status, "val_best": r.val_best, "test_final_mean": r.test_final(),
             "improved": r.improved, "overrides": r.overrides, "error": r.error} for r in records]


def write_summary(sweep_dir: Path) -> list[dict]:
    """summary.json and summary.csv in the sweep dir, and a rich table."""
    records = collect_runs([sweep_dir])
    rows = summary_rows(records)
    groups = seed_groups(records)
    write_json(sweep_dir / "summary.json", rows)
    if over_seeds(groups):  # some configuration ran over several seeds
        write_seed_groups(sweep_dir / "seeds.csv", groups)
        write_json(sweep_dir / "seeds.json", [g.record() for g in groups])
    write_csv(sweep_dir / "summary.csv", ["job", "status", "val_best", "test_final_mean", "improved", "overrides",
                                          "error"],
              ([row["job"], row["status"], row["val_best"], row["test_final_mean"], row["improved"],
                " ".join(f"{k}={v}" for k, v in row["overrides"].items()), row["error"] or ""] for row in rows))
    failed = sum(row["status"] == "failed" for row in rows)
    show(runs_table(records, f"sweep {sweep_dir}: {len(rows)} jobs, {failed} failed",
                               caption="sorted by validation loss; failed jobs last"))
    if over_seeds(groups):
        show(seeds_table(groups, f"sweep {sweep_dir}: over seeds"))
    matrix = collect_matrix(records)
    if matrix:  # jobs evaluated on several tasks: experiment=generalization_matrix
        write_matrix(sweep_dir, matrix)
    finite = [row for row in rows if math.isfinite(row["val_best"])]
    if finite:
        log.info("best job %s: validation loss %s", finite[0]["job"], fmt(finite[0]["val_best"]))
    return rows


def write_matrix(out: Path, rows: dict) -> None:
    """matrix.csv, matrix.json, TensorBoard (matrix_tb/) and the rich table of a generalisation matrix."""
    best = best_rows(rows)
    write_json(out / "matrix.json", {"rows": rows, "best_row_per_task": best})
    figures = ["final_mean", "ratio_mean", "final_median", "ratio_median", "final_mean_log10", "log10_gap"]
    write_csv(out / "matrix.csv", ["optimizer", "task", "num_steps", *figures, "best_baseline_mean",
                                   "best_baseline_median", "best_baseline_mean_log10"],
              ([row, variant, cell["num_steps"], *(cell[f] for f in figures),
                *(f"{cell[f'best_{f}'][0]} {cell[f'best_{f}'][1]:.6g}" for f in ("final_mean", "final_median",
                                                                                  "final_mean_log10"))]
               for row, cells in rows.items() for variant, cell in cells.items()))
    variants = list(dict.fromkeys(v for cells in rows.values() for v in cells))
    lines = ["| optimizer | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(matrix_cell_text(cells[v]) if v in cells else "" for v in variants) + " |"
              for row, cells in rows.items()]
    write_matrix_tensorboard(out / "matrix_tb", rows, "\n".join(lines))
    show(matrix_table(rows, best, f"generalisation matrix: {len(rows)} optimizers x {len(variants)} tasks"))


def write_seed_groups(path: Path, groups) -> None:
    write_csv(path, ["configuration", "seeds", "ratio_mean", "ratio_std", "ratio_ci95_low", "ratio_ci95_high",
                     "beat_best_baseline", "mean_log10_gap", "ratios"],
              ([g.label, " ".join(str(s) for s, _, _ in g.runs), g.mean, g.std, *g.interval, g.wins, g.log10_gap,
                " ".join(f"{r:.6g}" for _, r, _ in g.runs)] for g in groups))


class SweepSummary(Callback):
    """Hydra callback (see conf/common.yaml): writes the summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_summary(sweep_dir)
