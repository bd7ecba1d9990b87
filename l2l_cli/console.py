"""Everything the user sees in the terminal: rich progress bars and result tables (one shared console)."""

from __future__ import annotations

import math
from typing import Dict, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from l2l_cli.evaluation import CurveStats, best_baseline


def console() -> Console:
    from rich import get_console

    return get_console()  # the same console that Hydra's RichHandler logs through, so lines never interleave


def progress(description_width: int = 12) -> Progress:
    return Progress(
        TextColumn(f"[bold]{{task.description:<{description_width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console(),
        transient=False,
    )


def fmt(value: float) -> str:
    if value is None or not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def results_table(stats: Dict[str, CurveStats], learning_rates: Dict[str, str], learned: Optional[str],
                  title: str) -> Table:
    """Final mean and median per optimizer and the ratio to the best baseline (below 1: better than it)."""
    best = best_baseline(stats, learned)
    table = Table(title=title, caption="* best baseline; ratios below 1 beat it; diverged: non-finite runs")
    for column in ("optimizer", "lr", "mean", "median", "mean/best", "median/best", "diverged"):
        table.add_column(column, justify="left" if column == "optimizer" else "right", no_wrap=True)
    ref = stats[best] if best else None
    for name, s in stats.items():
        ratio_mean = s.final_mean / ref.final_mean if ref else float("nan")
        ratio_median = s.final_median / ref.final_median if ref else float("nan")
        style = "bold green" if name == best else ("bold" if name == learned else None)
        table.add_row(name + (" *" if name == best else ""), learning_rates.get(name, ""),
                      fmt(s.final_mean), fmt(s.final_median), fmt(ratio_mean), fmt(ratio_median),
                      f"{s.nonfinite}/{s.runs}", style=style)
    return table


def generalization_table(rows: Dict[str, Dict[str, float]], steps: Dict[str, int], learned: Optional[str]) -> Table:
    """Rows = variants, columns = optimizers, cells = mean final loss; the best of each row in bold green."""
    optimizers = list(next(iter(rows.values())))
    table = Table(title="generalisation: mean final test loss per variant", caption="best per row in bold green")
    table.add_column("variant")
    table.add_column("steps", justify="right")
    for name in optimizers:
        table.add_column(name, justify="right", no_wrap=True)
    for variant, row in rows.items():
        finite = {n: v for n, v in row.items() if math.isfinite(v)}
        best = min(finite, key=finite.get) if finite else None
        cells = [f"[bold green]{fmt(v)}[/]" if n == best else fmt(v) for n, v in row.items()]
        table.add_row(variant, str(steps[variant]), *cells)
    return table
