"""Peak resident memory of a meta-training run, and the bytes per coordinate per unrolled step (from two unroll
lengths, each in a fresh process), per task and estimator (truncated BPTT and the estimator modes selected); on the
CPU, unless --skip-memory."""

from __future__ import annotations

from typing import Iterator

from benchmarks.harness import child_figure
from benchmarks.registry import Benchmark, Result, register
from benchmarks.tasks import DEFAULT_ESTIMATOR, TASKS, estimator_modes
from l2l_cli.optimizees import build_family

ITERATIONS = 2  # meta-iterations of each fresh process


def child_peak_rss(task: str, unroll: int, iterations: int, threads: int | None,
                   estimator: str = DEFAULT_ESTIMATOR, optimizer: str | None = None) -> float:
    """Peak RSS (MiB) of a fresh process that meta-trains `iterations` iterations (in that process: no workers)."""
    code = ("from benchmarks.harness import peak_rss_mib; from benchmarks.tasks import trainer_for;"
            " t = trainer_for(sys.argv[2], torch.device('cpu'), False, int(sys.argv[3]), sys.argv[5],"
            " sys.argv[6] or None);\n"
            "[t.train_iteration() for _ in range(int(sys.argv[4]))]; print(peak_rss_mib())")
    return child_figure(code, threads, task, str(unroll), str(iterations), estimator, optimizer or "")


def measure(task: str, estimator: str, threads: int | None, optimizer: str | None = None) -> dict:
    """Peak RSS with unrolls of 20 (the default) and 10 steps, and from their difference the bytes per coordinate per
    unrolled step."""
    short = child_peak_rss(task, 10, ITERATIONS, threads, estimator, optimizer)
    full = child_peak_rss(task, 20, ITERATIONS, threads, estimator, optimizer)
    cfg = TASKS[task]
    coords = cfg.batch_size * build_family(cfg).num_params
    per = (full - short) * 2**20 / (10 * coords)
    return {"peak_rss_mib_unroll_20": full, "peak_rss_mib_unroll_10": short,
            "bytes_per_coordinate_per_unrolled_step": per, "coordinates": coords}


@register
class Memory(Benchmark):
    name = "memory"

    def selected(self, args, device) -> bool:
        return not args.skip_memory and device.type == "cpu"

    def run(self, args, device) -> Iterator[Result]:
        estimators = [DEFAULT_ESTIMATOR] + [m for m in args.modes if m in estimator_modes()]
        for task in (t for t in args.tasks if t in TASKS):
            for estimator in estimators:
                key = task if estimator == DEFAULT_ESTIMATOR else f"{task}/{estimator}"
                yield key, measure(task, estimator, args.threads, args.optimizer)

    def line(self, name: str, m: dict) -> str:
        task, _, estimator = name.partition("/")
        return (f"memory {task:9s} {estimator or DEFAULT_ESTIMATOR:5s}: peak RSS {m['peak_rss_mib_unroll_20']:.0f} "
                f"MiB (unroll 20) / {m['peak_rss_mib_unroll_10']:.0f} MiB (unroll 10) -> "
                f"{m['bytes_per_coordinate_per_unrolled_step']:.0f} bytes per coordinate per unrolled step")
