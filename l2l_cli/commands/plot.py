"""`l2l plot DIR...`: one view of many runs (a sweep dir, eval dirs, or both).

Writes to --out (default: DIR/plot for one DIR, else outputs/plot/<time>): TensorBoard (each run's curves and the
hparams table: overrides vs validation and test losses), comparison.png, comparison.csv; prints a rich table
sorted by the validation metric.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

from rich.table import Table

from l2l_cli.console import console, fmt
from l2l_cli.runs import RunRecord, collect_runs
from l2l_cli.writers import TensorBoardWriter

TAG_SAFE = str.maketrans({"/": "_", " ": "_", "=": "-", ",": "_"})


def run_name(record: RunRecord) -> str:
    return record.label.translate(TAG_SAFE) or "run"


def metrics_of(record: RunRecord) -> dict:
    metrics = {"val/best": record.val_best, "test/final_mean": record.test_final()}
    if record.best_baseline:
        baseline = record.test_final(record.best_baseline)
        metrics["test/best_baseline_final_mean"] = baseline
        metrics["test/ratio_to_best_baseline"] = record.test_final() / baseline if baseline else math.nan
    return metrics


def write_tensorboard(out: Path, records: list[RunRecord]) -> None:
    """One TensorBoard run per input run: the studied optimizer's mean curve and an hparams entry."""
    keys = sorted({k for r in records for k in r.overrides})
    for record in records:
        writer = TensorBoardWriter(out / "tb" / run_name(record))
        try:
            if record.results:
                curve = record.results["optimizers"][record.learned]["mean"]
                for step, value in enumerate(curve):
                    if math.isfinite(value):
                        writer.scalar("loss/mean", value, step)
            hparams = {k: record.overrides.get(k, "") for k in keys} or {"run": record.label}
            hparams["status"] = record.status
            metrics = {k: v for k, v in metrics_of(record).items() if math.isfinite(v)}
            writer.hparams(hparams, metrics or {"val/best": math.nan})
        finally:
            writer.close()


def write_csv(path: Path, records: list[RunRecord]) -> None:
    keys = sorted({k for r in records for k in r.overrides})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "status", *keys, "val_best", "test_final_mean", "best_baseline",
                         "best_baseline_final_mean", "ratio_to_best_baseline", "path", "error"])
        for r in records:
            m = metrics_of(r)
            writer.writerow([r.label, r.status, *(r.overrides.get(k, "") for k in keys), r.val_best,
                             m["test/final_mean"], r.best_baseline or "", m.get("test/best_baseline_final_mean", ""),
                             m.get("test/ratio_to_best_baseline", ""), str(r.path), r.error or ""])


def plot_png(path: Path, records: list[RunRecord]) -> bool:
    """Each run's learned-optimizer mean curve (log scale); the top run's best baseline dashed for reference."""
    with_curves = [r for r in records if r.results]
    if not with_curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=150)
    for r in with_curves:
        ax.plot(r.results["optimizers"][r.learned]["mean"], label=f"{r.label} ({r.learned})", linewidth=1.4)
    top = with_curves[0]
    if top.best_baseline:
        ax.plot(top.results["optimizers"][top.best_baseline]["mean"], "k--", linewidth=1.2,
                label=f"{top.best_baseline} (best baseline of {top.label})")
    ax.set_yscale("log")
    ax.set_xlabel("optimizee step")
    ax.set_ylabel("mean test loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def runs_table(records: list[RunRecord]) -> Table:
    table = Table(title=f"{len(records)} runs, best validation loss first")
    for column in ("run", "overrides", "val best", "test final", "best baseline", "ratio", "status"):
        table.add_column(column, justify="right" if column in ("val best", "test final", "ratio") else "left")
    for r in records:
        m = metrics_of(r)
        baseline = f"{r.best_baseline} {fmt(m['test/best_baseline_final_mean'])}" if r.best_baseline else ""
        status = r.status if r.status != "failed" else f"[red]failed: {r.error}[/]"
        table.add_row(r.label, " ".join(f"{k}={v}" for k, v in r.overrides.items()), fmt(r.val_best),
                      fmt(m["test/final_mean"]), baseline, fmt(m.get("test/ratio_to_best_baseline", math.nan)),
                      status)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="l2l plot", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep dirs, train run dirs or eval dirs")
    parser.add_argument("--out", type=Path, default=None, help="output dir")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"l2l: error: plot: not a directory: {', '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    out = args.out or (args.dirs[0] / "plot" if len(args.dirs) == 1 else
                       Path("outputs") / "plot" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    records = [r for r in collect_runs(args.dirs) if out.resolve() not in (r.path, *r.path.parents)]
    if not records:
        print(f"l2l: error: plot: no runs (metrics.json, results.json or error.json) under "
              f"{', '.join(map(str, args.dirs))}", file=sys.stderr)
        sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    write_tensorboard(out, records)
    write_csv(out / "comparison.csv", records)
    has_png = plot_png(out / "comparison.png", records)
    console().print(runs_table(records))
    print(f"wrote {out}: tb/, comparison.csv{', comparison.png' if has_png else ''}")
