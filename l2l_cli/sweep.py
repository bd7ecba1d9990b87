"""After a multirun: one summary of every job (overrides, metric, status, error), failed jobs included."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from l2l_cli.console import console, fmt
from l2l_cli.runs import RunRecord, collect_runs

log = logging.getLogger("l2l.sweep")


def summary_rows(records: list[RunRecord]) -> list[dict]:
    return [{"job": r.label, "status": r.status, "val_best": r.val_best, "test_final_mean": r.test_final(),
             "overrides": r.overrides, "error": r.error} for r in records]


def summary_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title, caption="sorted by validation loss; failed jobs last")
    for column in ("job", "overrides", "val best", "test final", "status"):
        table.add_column(column, justify="right" if column in ("val best", "test final") else "left")
    for row in rows:
        overrides = " ".join(f"{k}={v}" for k, v in row["overrides"].items())
        status = row["status"] if row["status"] != "failed" else f"[red]failed: {row['error']}[/]"
        table.add_row(row["job"], overrides, fmt(row["val_best"]), fmt(row["test_final_mean"]), status)
    return table


def write_summary(sweep_dir: Path) -> list[dict]:
    """summary.json and summary.csv in the sweep dir, and a rich table."""
    rows = summary_rows(collect_runs([sweep_dir]))
    (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2, allow_nan=True))
    with open(sweep_dir / "summary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["job", "status", "val_best", "test_final_mean", "overrides", "error"])
        for row in rows:
            writer.writerow([row["job"], row["status"], row["val_best"], row["test_final_mean"],
                             " ".join(f"{k}={v}" for k, v in row["overrides"].items()), row["error"] or ""])
    failed = sum(row["status"] == "failed" for row in rows)
    console().print(summary_table(rows, f"sweep {sweep_dir}: {len(rows)} jobs, {failed} failed"))
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
