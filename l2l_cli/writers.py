"""Where results go: TensorBoard event files, results.json, curves.csv and a log-scale curves.png."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Dict, Protocol

from l2l_cli.evaluation import CurveStats

CURVE_TAGS = ("mean", "median", "q10", "q90")


class ScalarWriter(Protocol):
    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def close(self) -> None: ...


class TensorBoardWriter:
    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # imported late: it pulls in tensorboard

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)

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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=True))
    os.replace(tmp, path)


def write_curves_csv(path: str | Path, stats: Dict[str, CurveStats]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step"] + [f"{name}_{key}" for name in stats for key in CURVE_TAGS])
        steps = len(next(iter(stats.values())).mean)
        for step in range(steps):
            writer.writerow([step] + [f"{getattr(s, key)[step]:.6g}" for s in stats.values() for key in CURVE_TAGS])


def plot_curves(path: str | Path, stats: Dict[str, CurveStats], title: str = "", labels: Dict[str, str] | None = None):
    """Mean loss per step on a log scale with the 10-90% band, one line per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for name, curve in stats.items():
        steps = range(len(curve.mean))
        label = (labels or {}).get(name, name)
        (line,) = ax.plot(steps, curve.mean, label=label, linewidth=2.0 if name == "lstm" else 1.3)
        ax.fill_between(steps, curve.q10, curve.q90, color=line.get_color(), alpha=0.12, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("optimizee step")
    ax.set_ylabel("loss (mean, 10-90% band)")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
