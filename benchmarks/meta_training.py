"""Meta-training, per task and mode: seconds per meta-iteration, the optimizee's loss-and-gradient share of it (timed
alone in the same block) and its FLOPs, coordinate-steps per second and the learned optimizer's FLOP/s as a fraction
of the matmul FLOP/s.

Modes: eager and compiled (truncated BPTT) and each other registered estimator (es, pes: ``estimator=es | pes``
with the estimator's defaults, estimator.sigma and estimator.pairs; eager) run in this process; default and
distributed run ranks (``distributed``).
"""

from __future__ import annotations

from typing import Iterator, Tuple

import torch

from benchmarks import distributed
from benchmarks.flops import model_flops, optimizee_work
from benchmarks.harness import blocks_of, per_call, summarise, timed_once
from benchmarks.registry import Benchmark, Result, register
from benchmarks.tasks import DEFAULT_ESTIMATOR, TASKS, default_workers, estimator_modes, iteration_figures, trainer_for

COMPILED = {"eager": False, "compiled": True}  # truncated BPTT in this process, with the learned step compiled or not
DISTRIBUTED_MODES = ("default", "distributed")


def modes() -> Tuple[str, ...]:
    return (*COMPILED, *DISTRIBUTED_MODES, *estimator_modes())


def measure(task: str, device, compiled: bool, iterations: int, blocks: int, estimator: str = DEFAULT_ESTIMATOR,
            optimizer: str | None = None) -> dict:
    """Meta-training in this process (no workers): `iterations` meta-iterations per block, after two untimed ones
    (the first, compilation included, reported on its own)."""
    trainer = trainer_for(task, device, compiled, estimator=estimator, optimizer=optimizer)
    first = timed_once(trainer.train_iteration, device)
    trainer.train_iteration()
    optimizee_fn, optimizee_flops = optimizee_work(trainer, device)
    optimizee_seconds = []

    def one_block() -> float:
        optimizee_seconds.append(per_call(optimizee_fn, 1, device))
        return per_call(trainer.train_iteration, iterations, device)

    flops = model_flops(trainer)
    best, summary = summarise(blocks_of(one_block, blocks, device), flops)
    figures = iteration_figures(trainer, summary, first, flops, 1, torch.get_num_threads())
    seconds, peak = figures["seconds_per_meta_iteration"], figures["matmul_flops_per_second"]
    # the optimizee's loss-and-gradient share of the iteration (timed alone, in the same block), and the model FLOP/s
    # with its FLOPs counted too
    return {"seconds_per_meta_iteration": seconds, "optimizee_seconds": optimizee_seconds[best],
            "optimizee_flops": optimizee_flops,
            "fraction_of_matmul_with_optimizee": (flops + optimizee_flops) / seconds / peak, **figures}


@register
class MetaTraining(Benchmark):
    name = "meta_training"

    def run(self, args, device) -> Iterator[Result]:
        for task in (t for t in args.tasks if t in TASKS):
            for mode in args.modes:
                yield from self.task_mode(task, mode, args, device)

    def task_mode(self, task: str, mode: str, args, device) -> Iterator[Result]:
        iterations = args.iterations or (5 if task == "quadratic" else 1)
        key = f"{task}/{mode}"
        if mode in DISTRIBUTED_MODES:
            workers = args.ranks if mode == "distributed" and args.ranks else default_workers(task, device)
            if mode == "default" and workers == 1:
                if "compiled" in args.modes:
                    yield f"meta-training {task:9s} {mode:8s}: compiled in one process, as above"
                return
            yield key, distributed.measure(task, device, iterations, args.blocks, workers, args.optimizer)
        elif mode in COMPILED:
            yield key, measure(task, device, COMPILED[mode], iterations, args.blocks, optimizer=args.optimizer)
        else:
            yield key, measure(task, device, False, iterations, args.blocks, mode, args.optimizer)

    def line(self, name: str, m: dict) -> str:
        task, mode = name.split("/")
        return (f"meta-training {task:9s} {mode:8s}: {m['seconds_per_meta_iteration']:6.3f} s/iteration "
                f"({m['seconds_per_meta_iteration_median']:.3f}) ({m['functions']} x {m['coordinates']} coords x "
                f"{m['steps']} steps), {m['coordinate_steps_per_second']:.3g} coord-steps/s, "
                f"{m['model_flops_per_second'] / 1e9:.1f} GFLOP/s = {100 * m['fraction_of_matmul']:.1f}% "
                f"({100 * m['fraction_of_matmul_median']:.1f}%) of matmul; first iteration "
                f"{m['first_iteration_seconds']:.1f} s" + optimizee_share(m) + all_reduce_share(m))


def optimizee_share(m: dict) -> str:
    if "optimizee_seconds" not in m:
        return ""
    return (f"; optimizee loss+grad {m['optimizee_seconds']:.3f} s of it ({m['optimizee_flops'] / 1e9:.1f} GFLOP), "
            f"learned optimizer and the rest {m['seconds_per_meta_iteration'] - m['optimizee_seconds']:.3f} s; all "
            f"model FLOPs {100 * m['fraction_of_matmul_with_optimizee']:.1f}% of matmul")


def all_reduce_share(m: dict) -> str:
    if "all_reduce_seconds" not in m:
        return ""
    return (f"; {m['workers']} ranks, all-reduce {m['all_reduce_seconds'] * 1e6:.0f} us = "
            f"{100 * m['all_reduce_share']:.1f}% of an iteration")
