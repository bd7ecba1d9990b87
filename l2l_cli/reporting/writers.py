"""Where results go: TensorBoard event files, JSON, CSV and log-scale PNG curves; one writer of each kind, used by
`l2l eval`, sweep summaries and `l2l plot` alike."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

from l2l_cli.core.files import write_text
from l2l_cli.evaluation.comparison import CurveStats

CURVE_TAGS = ("mean", "median", "q10", "q90")


class TensorBoardWriter:
    """The scalar writer of meta-training (``scalar``, ``close``), and TensorBoard's hparams and layouts."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # imported late: it pulls in tensorboard

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)

    def image(self, tag: str, image, step: int) -> None:
        """image: (3, H, W) in [0, 1]."""
        self._writer.add_image(tag, image, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self._writer.add_text(tag, text, step)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        """An entry of TensorBoard's hparams table, in this run's own directory."""
        self._writer.add_hparams(hparams, metrics, run_name=".")

    def custom_scalars(self, layout: dict) -> None:
        self._writer.add_custom_scalars(layout)

    def close(self) -> None:
        self._writer.close()


def write_curves_tensorboard(tb_dir: str | Path, stats: Dict[str, CurveStats], prefix: str = "loss") -> None:
    """One TensorBoard run per optimizer with the same tags, so the curves overlay in one chart; a custom-scalars
    layout puts the mean and median of all optimizers side by side."""
    tb_dir = Path(tb_dir)
    charts = {f"{prefix} {k} (all optimizers)": ["Multiline", [f"^{prefix}/{k}$"]] for k in ("mean", "median")}
    layout = {prefix: charts}
    for i, (name, curve) in enumerate(stats.items()):
        writer = TensorBoardWriter(tb_dir / name)
        try:
            if i == 0:
                writer.custom_scalars(layout)
            for key in CURVE_TAGS:
                for step, value in enumerate(getattr(curve, key)):
                    if math.isfinite(value):
                        writer.scalar(f"{prefix}/{key}", value, step)
        finally:
            writer.close()


def write_json(path: str | Path, payload: dict) -> None:
    """Atomic: a crash mid-write never leaves a truncated results file."""
    write_text(path, json.dumps(payload, indent=2, allow_nan=True) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Atomic like write_json: readers (a sweep summary, `l2l plot`) never see half a table."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, text.getvalue())


def write_curves_csv(path: str | Path, stats: Dict[str, CurveStats]) -> None:
    steps = len(next(iter(stats.values())).mean)
    write_csv(path, ["step"] + [f"{name}_{key}" for name in stats for key in CURVE_TAGS],
              ([step] + [f"{getattr(s, key)[step]:.6g}" for s in stats.values() for key in CURVE_TAGS]
               for step in range(steps)))


@dataclass
class Curve:
    label: str
    values: Sequence[float]
    band: Optional[tuple] = None  # (low, high) per step, drawn as a shaded band
    width: float = 1.3
    style: str = "-"  # a matplotlib format string ("k--": black dashed)


def plot_curves(path: str | Path, curves: Sequence[Curve], title: str = "", ylabel: str = "loss",
                size: tuple = (6.4, 4.2), legend_size: Optional[float] = None) -> None:
    """Curves per optimizee step on a log scale, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=150)
    for curve in curves:
        steps = range(len(curve.values))
        (line,) = ax.plot(steps, curve.values, curve.style, label=curve.label, linewidth=curve.width)
        if curve.band is not None:
            ax.fill_between(steps, curve.band[0], curve.band[1], color=line.get_color(), alpha=0.12, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("optimizee step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_generalization_tensorboard(tb_dir: str | Path, rows: Dict[str, Dict[str, float]],
                                     steps: Dict[str, int]) -> None:
    """The generalisation table in TensorBoard: each variant's mean final loss per optimizer as scalars
    (``generalization/<variant>``, one run per optimizer's tag) and the table as text."""
    writer = TensorBoardWriter(tb_dir)
    try:
        optimizers = list(next(iter(rows.values())))
        lines = ["| variant | steps | " + " | ".join(optimizers) + " |", "|---" * (len(optimizers) + 2) + "|"]
        for variant, row in rows.items():
            for name, value in row.items():
                writer.scalar(f"generalization/{variant}/{name}", value, steps[variant])
            lines.append(f"| {variant} | {steps[variant]} | " + " | ".join(f"{row[n]:.4g}" for n in optimizers) + " |")
        writer.text("generalization/table", "\n".join(lines), 0)
    finally:
        writer.close()


def write_matrix_tensorboard(tb_dir: str | Path, rows: Dict[str, Dict[str, dict]], text: str) -> None:
    """The generalisation matrix in TensorBoard: per task and optimizer the three figures against the best tuned
    baseline as scalars (``matrix/<figure>/<task>/<optimizer>``) and the whole matrix as a text table."""
    writer = TensorBoardWriter(tb_dir)
    try:
        for row, cells in rows.items():
            for variant, cell in cells.items():
                for key in ("ratio_mean", "ratio_median", "log10_gap"):
                    if math.isfinite(cell[key]):
                        writer.scalar(f"matrix/{key}/{variant}/{row}", cell[key], cell["num_steps"])
        writer.text("matrix/table", text, 0)
    finally:
        writer.close()


def write_pictures(path: str | Path, tb_dir: str | Path, columns: Dict[str, object], title: str,
                   step: int) -> None:
    """An image grid (rows = functions, columns = ``columns``' names, each (n, 3, H, W) in [0, 1]) as a PNG with
    column titles, and as one image in TensorBoard's images tab (run ``pictures``, tag ``pictures/final``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    names = list(columns)
    rows = next(iter(columns.values())).shape[0]
    fig, axes = plt.subplots(rows, len(names), figsize=(1.6 * len(names), 1.6 * rows + 0.4), dpi=150, squeeze=False)
    for j, name in enumerate(names):
        for i in range(rows):
            ax = axes[i][j]
            ax.imshow(columns[name][i].detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    pad = 2  # white pixels between tiles
    tiles = [torch.cat([torch.nn.functional.pad(columns[name][i].detach().clamp(0, 1).cpu(), (pad,) * 4, value=1.0)
                        for name in names], dim=2) for i in range(rows)]
    writer = TensorBoardWriter(Path(tb_dir) / "pictures")
    try:
        writer.image("pictures/final", torch.cat(tiles, dim=1), step)
        writer.text("pictures/columns", " | ".join(names), step)
    finally:
        writer.close()


def stats_curves(stats: Dict[str, CurveStats], labels: Dict[str, str], highlight: Optional[str]) -> list:
    """An evaluation's mean curves with their 10-90% bands, the studied optimizer drawn bold."""
    return [Curve(labels.get(name, name), s.mean, (s.q10, s.q90), width=2.0 if name == highlight else 1.3)
            for name, s in stats.items()]
