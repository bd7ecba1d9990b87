"""Where a meta-iteration's time goes: torch.profiler's top operators for the default quadratic meta-iteration,
eager and with the compiled LSTM step (the README's performance section summarises this output); with --estimator
es | pes | es-shared | pes-shared, that estimator's meta-iteration (eager: es and pes never compile).

Usage: python benchmarks/profile_step.py [--task quadratic|mnist] [--estimator tbptt] [--rows 12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tasks import DEFAULT_ESTIMATOR, estimator_modes, trainer_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="quadratic")
    parser.add_argument("--estimator", default=DEFAULT_ESTIMATOR, choices=(DEFAULT_ESTIMATOR, *estimator_modes()))
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    for compiled in (False, True) if args.estimator == DEFAULT_ESTIMATOR else (False,):
        trainer = trainer_for(args.task, torch.device("cpu"), compiled, estimator=args.estimator)
        for _ in range(2):
            trainer.train_iteration()  # warm-up (and compilation)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.train_iteration()
        print(f"\n=== {args.task}, {args.estimator}, {'compiled LSTM step' if compiled else 'eager'}: one "
              "meta-iteration ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
