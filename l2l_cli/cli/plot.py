"""`l2l plot DIR...`: one view of many runs (a sweep dir, eval dirs, or both).

Writes to --out (default: DIR/plot for one DIR, else outputs/plot/<time>): TensorBoard (each run's curves and the
hparams table: overrides vs validation and test losses), comparison.png, comparison.csv; prints a rich table
sorted by the validation metric. Runs that differ only in ``seed`` are also summarised as one configuration
(``seeds``): seeds.csv, a table, and tb_seeds/ for TensorBoard's hparams view.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from l2l_cli.cli.console import runs_table, seeds_table, show
from l2l_cli.cli.run_dir_lock import RunDirBusy, RunDirLock, unique_suffix
from l2l_cli.cli.sweep_summary import write_seed_groups
from l2l_cli.reporting.run_records import RunRecord, collect_runs, metrics_of
from l2l_cli.reporting.seed_stats import SeedGroup, over_seeds, seed_groups
from l2l_cli.reporting.writers import Curve, TensorBoardWriter, plot_curves, write_csv

TAG_SAFE = str.maketrans({"/": "_", " ": "_", "=": "-", ",": "_"})


def run_name(record: RunRecord) -> str:
    return record.label.translate(TAG_SAFE) or "run"


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


def write_seed_tensorboard(out: Path, groups: list[SeedGroup]) -> None:
    """TensorBoard's hparams view over configurations: one entry per group of runs differing only in seed."""
    keys = sorted({k for g in groups for k in g.overrides})
    for k, group in enumerate(groups):
        writer = TensorBoardWriter(out / "tb_seeds" / f"{k:03d}_{group.label.translate(TAG_SAFE)[:80]}")
        try:
            low, high = group.interval
            metrics = {"seeds/ratio_mean": group.mean, "seeds/ratio_std": group.std, "seeds/ratio_ci95_low": low,
                       "seeds/ratio_ci95_high": high, "seeds/beat_best_baseline": float(group.wins),
                       "seeds/mean_log10_gap": group.log10_gap}
            hparams = {**{key: group.overrides.get(key, "") for key in keys}, "seeds": len(group.runs)}
            writer.hparams(hparams, {k: v for k, v in metrics.items() if math.isfinite(v)} or
                           {"seeds/ratio_mean": math.nan})
        finally:
            writer.close()


def write_comparison_csv(path: Path, records: list[RunRecord]) -> None:
    keys = sorted({k for r in records for k in r.overrides})
    rows = []
    for r in records:
        m = metrics_of(r)
        rows.append([r.label, r.status, *(r.overrides.get(k, "") for k in keys), r.val_best, m["test/final_mean"],
                     r.best_baseline or "", m.get("test/best_baseline_final_mean", ""),
                     m.get("test/ratio_to_best_baseline", ""), str(r.path), r.error or ""])
    write_csv(path, ["run", "status", *keys, "val_best", "test_final_mean", "best_baseline",
                     "best_baseline_final_mean", "ratio_to_best_baseline", "path", "error"], rows)


def plot_png(path: Path, records: list[RunRecord]) -> bool:
    """Each run's learned-optimizer mean curve (log scale); the top run's best baseline dashed for reference."""
    with_curves = [r for r in records if r.results]
    if not with_curves:
        return False
    curves = [Curve(f"{r.label} ({r.learned})", r.results["optimizers"][r.learned]["mean"], width=1.4)
              for r in with_curves]
    top = with_curves[0]
    if top.best_baseline:
        curves.append(Curve(f"{top.best_baseline} (best baseline of {top.label})",
                            top.results["optimizers"][top.best_baseline]["mean"], width=1.2, style="k--"))
    plot_curves(path, curves, ylabel="mean test loss", size=(7, 4.5), legend_size=7)
    return True


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
                       Path("outputs") / "plot" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{unique_suffix()}")
    holding = [d for d in args.dirs if out.resolve() in (d.resolve(), *d.resolve().parents)]
    if holding:
        print(f"l2l: error: plot: --out {out} holds the dir it would read, {holding[0]} (its files would mix with the "
              "runs'); choose another --out (default: DIR/plot)", file=sys.stderr)
        sys.exit(2)
    records = [r for r in collect_runs(args.dirs) if out.resolve() not in (r.path, *r.path.parents)]
    if not records:
        print(f"l2l: error: plot: no runs (metrics.json, results.json or error.json) under "
              f"{', '.join(map(str, args.dirs))}", file=sys.stderr)
        sys.exit(2)
    try:
        lock = RunDirLock(out, "plot").acquire()
    except (RunDirBusy, OSError) as exc:
        print(f"l2l: error: plot: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        write_tensorboard(out, records)
        write_comparison_csv(out / "comparison.csv", records)
        has_png = plot_png(out / "comparison.png", records)
        groups = seed_groups(records)
        several = over_seeds(groups)
        if several:
            write_seed_groups(out / "seeds.csv", groups)
            write_seed_tensorboard(out, groups)
    finally:
        lock.release()
    show(runs_table(records, f"{len(records)} runs, best validation loss first"))
    if several:
        show(seeds_table(groups, f"{len(groups)} configurations over seeds"))
    print(f"wrote {out}: tb/, comparison.csv{', comparison.png' if has_png else ''}"
          f"{', seeds.csv, tb_seeds/ (hparams over seeds)' if several else ''}")
