"""Where the CNN optimizees' time goes: torch.profiler's top operators for one loss-and-gradient of the conv net and of
Neural Art (a chunk of functions, as evaluation and meta-training compute them), with the seconds per call. It uses
only what every version of the package has (build_family, sample, initial_params, loss_and_grad), so the same file
profiles an older commit too: copy it into that checkout and run it there.

Usage: python benchmarks/profile_cnn.py [--tasks convnet,neural_art] [--functions 4] [--rows 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + sys.path[1:]

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from l2l_cli.optimizees import build_family  # noqa: E402
from l2l_cli.optimizees.base import loss_and_grad  # noqa: E402
from l2l_cli.optimizees.convnet import ConvNetConfig  # noqa: E402
from l2l_cli.optimizees.neural_art import NeuralArtConfig  # noqa: E402

TASKS = {"convnet": ConvNetConfig, "neural_art": NeuralArtConfig}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="convnet,neural_art")
    parser.add_argument("--functions", type=int, default=4)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for task in args.tasks.split(","):
        family = build_family(TASKS[task]())
        gen = torch.Generator().manual_seed(0)
        problem = family.sample(args.functions, 100, gen, torch.device("cpu"))
        theta = family.initial_params(problem)
        for step in range(2):  # warm-up
            loss_and_grad(family, problem, theta, step)
        start = time.perf_counter()
        for step in range(args.calls):
            loss_and_grad(family, problem, theta, step)
        seconds = (time.perf_counter() - start) / args.calls
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for step in range(args.calls):
                loss_and_grad(family, problem, theta, step)
        print(f"\n=== {task}: loss and gradient of {args.functions} functions, {seconds * 1e3:.1f} ms per call "
              f"({args.threads} threads); profiler over {args.calls} calls ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
