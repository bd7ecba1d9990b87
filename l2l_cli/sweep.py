"""After a multirun: one summary of every job (overrides, metric, status, error), failed jobs included."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from l2l_cli.console import fmt, runs_table, show
from l2l_cli.runs import RunRecord, collect_runs
from l2l_cli.writers import write_csv, write_json

log = logging.getLogger("l2l.sweep")


def summary_rows(records: list[RunRecord]) -> list[dict]:
    return [{"job": r.label, "status": r.status, "val_best": r.val_best, "test_final_mean": r.test_final(),
             "improved": r.improved, "overrides": r.overrides, "error": r.error} for r in records]


def write_summary(sweep_dir: Path) -> list[dict]:
    """summary.json and summary.csv in the sweep dir, and a rich table."""
    records = collect_runs([sweep_dir])
    rows = summary_rows(records)
    write_json(sweep_dir / "summary.json", rows)
    write_csv(sweep_dir / "summary.csv", ["job", "status", "val_best", "test_final_mean", "improved", "overrides",
                                          "error"],
              ([row["job"], row["status"], row["val_best"], row["test_final_mean"], row["improved"],
                " ".join(f"{k}={v}" for k, v in row["overrides"].items()), row["error"] or ""] for row in rows))
    failed = sum(row["status"] == "failed" for row in rows)
    show(runs_table(records, f"sweep {sweep_dir}: {len(rows)} jobs, {failed} failed",
                               caption="sorted by validation loss; failed jobs last"))
    finite = [row for row in rows if math.isfinite(row["val_best"])]
    if finite:
        log.info("best job %s: validation loss %s", finite[0]["job"], fmt(finite[0]["val_best"]))
    return rows


class SweepSummary(Callback):
    """Hydra callback (see conf/common.yaml): writes the summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_summary(sweep_dir)
