"""Wall time of the same 4-job toy sweep with Hydra's basic launcher (jobs one after another, all cores each) and
with the joblib launcher (2 workers, the cores split between them), measured in one run.

Usage: python benchmarks/sweep_launchers.py [--iterations N]
Writes benchmarks/results/sweep_launchers.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sweep(launcher_args: list[str], iterations: int, sweep_dir: Path) -> float:
    command = [sys.executable, "-m", "l2l_cli", "train", "-m", "seed=0,1,2,3", f"train.iterations={iterations}",
               "train.val_every=50", "train.evaluate=false", f"hydra.sweep.dir={sweep_dir}", *launcher_args]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100, help="meta-iterations per job (quadratic)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep_launchers.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        basic = sweep([], args.iterations, Path(tmp) / "basic")
        joblib = sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], args.iterations, Path(tmp) / "joblib")
    figures = {"jobs": 4, "iterations_per_job": args.iterations, "basic_seconds": basic, "joblib_2_seconds": joblib,
               "basic_over_joblib": basic / joblib}
    print(f"4-job quadratic sweep, {args.iterations} meta-iterations each: basic launcher {basic:.1f} s, "
          f"joblib (2 workers, 1 thread each) {joblib:.1f} s, ratio {basic / joblib:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
