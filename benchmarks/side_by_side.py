"""Two independent meta-trainings (a population's members, a study's variants): one process on every thread doing
them one after another, against one process per thread doing them side by side (core.processes, pinned to cores of
their own), in one run. Each figure is a task's default compiled meta-iteration (benchmarks.tasks.trainer_for),
warmed up (compiled) first; side by side, every process waits at a barrier after its warm-up, so the timed
iterations overlap. The two are measured in alternating blocks (this machine's speed drifts by 1.5x within
minutes) and reported as the fastest block of each and each block's ratio.

Usage: python benchmarks/side_by_side.py [--tasks mnist,convnet] [--iterations 6] [--threads 2] [--blocks 3]
Writes benchmarks/results/side_by_side.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import get_context
from pathlib import Path

sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + sys.path[1:]

import torch  # noqa: E402

from benchmarks.harness import RESULTS, matmul_flops  # noqa: E402
from benchmarks.tasks import trainer_for  # noqa: E402
from l2l_cli.core.processes import Failed, SideBySide  # noqa: E402

WARM_UP = 2


def timed_iterations(task: str, iterations: int, barrier=None) -> float:
    """Seconds for ``iterations`` meta-iterations of ``task`` after the warm-up (and, given one, the barrier)."""
    trainer = trainer_for(task, torch.device("cpu"), compiled=True)
    for _ in range(WARM_UP):
        trainer.train_iteration()
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    for _ in range(iterations):
        trainer.train_iteration()
    return time.perf_counter() - start


def _side(index: int, channel, task: str, iterations: int, barrier) -> None:
    channel.send(timed_iterations(task, iterations, barrier))


def side_by_side(task: str, iterations: int, processes: int, threads: int) -> float:
    """Wall seconds until every process has done ``iterations`` (the last one to finish)."""
    barrier = get_context("spawn").Barrier(processes)
    side = SideBySide(processes, threads, _side, lambda i: (task, iterations, barrier), "bench-side")
    seconds = []
    try:
        for message in side.messages():
            if isinstance(message, Failed):
                raise message.error
            seconds.append(message)
    finally:
        side.join()
    return max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mnist")
    parser.add_argument("--iterations", type=int, default=6, help="timed meta-iterations per meta-training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=3, help="alternating measurements of the two ways")
    parser.add_argument("--out", default=str(RESULTS / "side_by_side.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    matmul = matmul_flops(torch.device("cpu"))
    print(f"torch {torch.__version__}, {args.threads} threads; dense fp32 matmul {matmul / 1e9:.1f} GFLOP/s")
    results = {"threads": args.threads, "matmul_flops": matmul, "blocks": args.blocks, "tasks": {}}
    for task in args.tasks.split(","):
        n = args.iterations * args.threads
        pairs = [(timed_iterations(task, n), side_by_side(task, args.iterations, args.threads, 1))
                 for _ in range(args.blocks)]  # alternating: the machine's speed drifts between blocks
        one, side = min(p[0] for p in pairs), min(p[1] for p in pairs)
        ratios = sorted(a / b for a, b in pairs)
        results["tasks"][task] = {"one_process_s": [p[0] for p in pairs], "side_by_side_s": [p[1] for p in pairs],
                                  "speedup_fastest": one / side, "speedup_per_block": ratios, "meta_iterations": n}
        print(f"{task}: {n} meta-iterations of {args.threads} meta-trainings, fastest of {args.blocks} blocks: one "
              f"process on {args.threads} threads {one:.1f} s ({one / n:.3f} s each), {args.threads} one-thread "
              f"processes side by side {side:.1f} s: {one / side:.2f}x (per block: "
              f"{', '.join(f'{r:.2f}x' for r in ratios)})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
