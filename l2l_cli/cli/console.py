"""Everything the user sees in the terminal: rich progress bars and result tables (one shared console)."""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Sequence

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from l2l_cli.evaluation.comparison import CurveStats, ratio
from l2l_cli.reporting.run_records import metrics_of


def console() -> Console:
    from rich import get_console

    return get_console()  # the same console that Hydra's RichHandler logs through, so lines never interleave


def progress(description_width: int = 12, disable: bool = False) -> Progress:
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
        disable=disable,
    )


def fmt(value: float) -> str:
    if value is None or not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


SHORT_TEXT = 16  # text columns no longer than this are kept whole, as numbers are


def make_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], caption: str | None = None,
               right: Sequence[str] = (), styles: Sequence[str | None] | None = None) -> Table:
    """Every table l2l prints (through ``show``): text columns left-aligned, the number columns named in ``right``
    right-aligned. The first column (each row's name), the numbers and short texts (a baseline's name) are never
    wrapped or cut; long texts (a sweep job's overrides) wrap (a long word folded, never cut), and are what gives
    way on a narrow terminal.
    ``styles``: one rich style (or None) per row."""
    rows = [list(row) for row in rows]
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    for k, column in enumerate(columns):
        cells = [Text.from_markup(row[k]).cell_len for row in rows]
        width = max([len(line) for line in column.split("\n")] + cells)
        whole = k == 0 or column in right or max(cells, default=0) <= SHORT_TEXT
        table.add_column(column, justify="right" if column in right else "left", no_wrap=whole,
                         min_width=width if whole else None, overflow="ellipsis" if whole else "fold")
    for k, row in enumerate(rows):
        table.add_row(*row, style=styles[k] if styles else None)
    return table


def show(table: Table) -> None:
    """Print a table whole: on a terminal narrower than its narrowest layout the lines wrap instead of being cut."""
    console().print(table, crop=False)


def results_table(stats: Dict[str, CurveStats], learning_rates: Dict[str, str], learned: Optional[str],
                  best: Optional[str], title: str) -> Table:
    """Final mean, median and mean log10 (the log of the geometric mean) per optimizer, and the ratios of mean and
    median to the best baseline's (below 1: better than it)."""
    ref = stats[best] if best else None
    rows, styles = [], []
    for name, s in stats.items():
        ratio_mean = ratio(s.final_mean, ref.final_mean) if ref else math.nan
        ratio_median = ratio(s.final_median, ref.final_median) if ref else math.nan
        styles.append("bold green" if name == best else ("bold" if name == learned else None))
        rows.append([name + (" *" if name == best else ""), learning_rates.get(name, ""), fmt(s.final_mean),
                     fmt(s.final_median), f"{s.final_mean_log10:.2f}", fmt(ratio_mean), fmt(ratio_median),
                     f"{s.nonfinite}/{s.runs}"])
    numbers = ("lr", "mean", "median", "mean\nlog10", "mean\n/best", "median\n/best", "diverged")
    return make_table(title, ("optimizer", *numbers), rows, right=numbers, styles=styles,
                      caption="* best baseline; ratios below 1 beat it; diverged: non-finite runs")


def generalization_table(rows: Dict[str, Dict[str, float]], steps: Dict[str, int]) -> Table:
    """Rows = variants, columns = optimizers, cells = mean final loss; the best of each row in bold green."""
    optimizers = list(next(iter(rows.values())))
    cells = []
    for variant, row in rows.items():
        finite = {n: v for n, v in row.items() if math.isfinite(v)}
        best = min(finite, key=finite.get) if finite else None
        cells.append([variant, str(steps[variant]),
                      *(f"[bold green]{fmt(v)}[/]" if n == best else fmt(v) for n, v in row.items())])
    return make_table("generalisation: mean final test loss per variant", ("variant", "steps", *optimizers), cells,
                      caption="best per row in bold green", right=("steps", *optimizers))


def runs_table(records, title: str, caption: str | None = None) -> Table:
    """One row per run (a sweep's jobs, `l2l plot`'s inputs): overrides, validation and test losses, the best
    baseline and the ratio to it, status."""
    rows = []
    for r in records:
        m = metrics_of(r)
        baseline = f"{r.best_baseline} {fmt(m['test/best_baseline_final_mean'])}" if r.best_baseline else ""
        status = r.status if r.status != "failed" else f"[red]failed: {r.error}[/]"
        if r.improved is False:
            status += " [yellow](no better than untrained)[/]"
        rows.append([r.label, " ".join(f"{k}={v}" for k, v in r.overrides.items()), fmt(r.val_best),
                     fmt(m["test/final_mean"]), baseline, fmt(m.get("test/ratio_to_best_baseline", math.nan)),
                     status])
    return make_table(title, ("run", "overrides", "val best", "test final", "best baseline", "ratio", "status"),
                      rows, caption=caption, right=("val best", "test final", "ratio"))


def seeds_table(groups, title: str) -> Table:
    """One row per configuration over its seeds: the ratio of the learned optimizer's mean final test loss to its
    best tuned baseline's (mean, std, 95% interval), how many seeds beat that baseline, the mean log10 gap."""
    rows = []
    for g in groups:
        low, high = g.interval
        rows.append([g.label, str(len(g.runs)), fmt(g.mean), fmt(g.std),
                     f"[{fmt(low)}, {fmt(high)}]" if math.isfinite(low) else "",
                     f"{g.wins} of {len(g.runs)}", fmt(g.log10_gap)])
    return make_table(title, ("configuration", "seeds", "ratio mean", "std", "95% interval", "beat best baseline",
                              "log10 gap"), rows,
                      caption="ratio: learned / best tuned baseline, mean final test loss (< 1: learned better); "
                              "log10 gap: learned - best baseline mean log10 final loss",
                      right=("seeds", "ratio mean", "std", "log10 gap"))


def matrix_cell_text(cell: dict) -> str:
    return f"{fmt(cell['ratio_mean'])} / {fmt(cell['ratio_median'])} / {cell['log10_gap']:+.2f}"


def matrix_table(rows: dict, best: dict, title: str) -> Table:
    """Rows = meta-trained optimizers, columns = test tasks; a cell: learned / best tuned baseline on the mean final
    loss, on the median, and the difference of mean log10 final losses (decades; < 0: learned better); the row
    with the lowest mean ratio per task in bold."""
    variants = list(dict.fromkeys(v for cells in rows.values() for v in cells))
    cells = []
    for row, row_cells in rows.items():
        texts = []
        for variant in variants:
            cell = row_cells.get(variant)
            text = matrix_cell_text(cell) if cell else ""
            if cell and best.get(variant) == row:
                text = f"[bold]{text}[/]"
            if cell and cell["ratio_mean"] < 1:
                text = f"[green]{text}[/]"
            texts.append(text)
        cells.append([row, *texts])
    steps = {v: next(c[v]["num_steps"] for c in rows.values() if v in c) for v in variants}
    return make_table(title, ("optimizer", *(f"{v} ({steps[v]} steps)" for v in variants)), cells,
                      caption="mean ratio / median ratio / mean-log10 gap vs the best tuned baseline of each task "
                              "(< 1, < 1, < 0: learned better; green: beats it on the mean; bold: best row per task)")
