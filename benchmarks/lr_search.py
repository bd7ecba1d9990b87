"""The staged learning-rate search against the full grid it replaces, on each task's default evaluation.

For each task, `l2l eval optimizer=adam optimizee=<task>` (every default baseline tuned on the task's validation
functions, then run on its test functions) twice in fresh processes, one after the other: with
eval.lr_search=grid (every value of eval.lr_grid, then the refinement, one at a time) and with
eval.lr_search=staged (the default). Prints and writes to benchmarks/results/lr_search.json: each run's wall time
and tuning time, each baseline's chosen learning rate under both and their distance in half-decade grid steps, the
best baseline's test mean under both and their ratio. The bar (issue 29): every chosen rate within one half-decade
step of the grid's, the best baseline's test mean within 2%.

Usage: python benchmarks/lr_search.py [--tasks quadratic,mnist,convnet,neural_art] [--out PATH] [-- overrides...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
TASKS = ("quadratic", "mnist", "convnet", "neural_art")


def evaluate(task: str, search: str, overrides: list, workdir: Path) -> dict:
    """One evaluation in a fresh process: its results.json, wall time and tuning time."""
    out = workdir / f"{task}-{search}"
    command = [sys.executable, "-m", "l2l_cli", "eval", "optimizer=adam", f"optimizee={task}",
               f"eval.lr_search={search}", f"hydra.run.dir={out}", *overrides]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    results = json.loads((out / "results.json").read_text())
    said = (done.stderr + done.stdout).splitlines()
    tuning = next((float(line.split("tuning took ")[1].split(" s")[0]) for line in said if "tuning took " in line),
                  math.nan)
    return {"results": results, "wall_s": wall, "tuning_s": tuning}


def compare(task: str, grid: dict, staged: dict) -> dict:
    g, s = grid["results"], staged["results"]
    rates = {}
    for name, entry in g["learning_rates"].items():
        lr_g, lr_s = entry["lr"], s["learning_rates"][name]["lr"]
        rates[name] = {"grid": lr_g, "staged": lr_s, "half_decades": abs(math.log10(lr_s / lr_g)) / 0.5,
                       "grid_runs": len(entry["validation_scores"]),
                       "staged_runs": len(s["learning_rates"][name]["validation_scores"]),
                       "staged_screened": len(s["learning_rates"][name].get("screening_scores", {})),
                       "staged_stopped": len(s["learning_rates"][name].get("stopped", {}))}
    best_g, best_s = g["best_baseline"], s["best_baseline"]
    mean_g = g["optimizers"][best_g]["final_mean"] if best_g else math.nan
    mean_s = s["optimizers"][best_s]["final_mean"] if best_s else math.nan
    return {"task": task, "grid_wall_s": grid["wall_s"], "staged_wall_s": staged["wall_s"],
            "grid_tuning_s": grid["tuning_s"], "staged_tuning_s": staged["tuning_s"],
            "learning_rates": rates, "best_baseline": {"grid": best_g, "staged": best_s},
            "best_test_mean": {"grid": mean_g, "staged": mean_s, "ratio": mean_s / mean_g},
            "within_bar": all(r["half_decades"] <= 1 + 1e-9 for r in rates.values())
            and abs(mean_s / mean_g - 1) <= 0.02}


def line(entry: dict) -> str:
    rates = ", ".join(f"{n} {r['grid']:.3g}/{r['staged']:.3g}" for n, r in entry["learning_rates"].items())
    best = entry["best_test_mean"]
    return (f"{entry['task']}: tuning {entry['grid_tuning_s']:.1f} s -> {entry['staged_tuning_s']:.1f} s "
            f"({entry['grid_tuning_s'] / entry['staged_tuning_s']:.2f}x; whole eval {entry['grid_wall_s']:.0f} s -> "
            f"{entry['staged_wall_s']:.0f} s); lr grid/staged: {rates}; best baseline "
            f"{entry['best_baseline']['grid']} {best['grid']:.4g} / {entry['best_baseline']['staged']} "
            f"{best['staged']:.4g} (x{best['ratio']:.4f}); within the bar: {entry['within_bar']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--out", default=str(RESULTS / "lr_search.json"))
    parser.add_argument("overrides", nargs="*", help="more overrides for both evaluations (after --)")
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            runs = {search: evaluate(task, search, args.overrides, Path(tmp)) for search in ("grid", "staged")}
            figures[task] = compare(task, runs["grid"], runs["staged"])
            print(line(figures[task]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
