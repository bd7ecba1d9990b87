"""Meta-training as `l2l train train.workers=<world>` runs it (train.parallel=distributed): ranks on this machine,
this process rank 0, each with its share of the threads, meta-gradients all-reduced after every unroll; and the
all-reduce alone, its share of an iteration. The ``default`` and ``distributed`` modes of ``meta_training``."""

from __future__ import annotations

import os

import torch

from benchmarks.flops import model_flops
from benchmarks.harness import blocks_of, matmul_flops, per_call, summarise, timed_once
from benchmarks.tasks import iteration_figures, trainer_for
from l2l_cli.core.environment import torch_threads
from l2l_cli.meta.distributed import LocalRanks, Rank, all_reduce_sum, close_group, device_for, init_group
from l2l_cli.meta.launch import pinned

REDUCE_REPEATS = 50
TIMEOUT_S = 600


def meta_gradient_buffer(trainer, device) -> torch.Tensor:
    """A tensor the size of what ranks all-reduce after an unroll: the meta-gradient and two losses."""
    return torch.zeros(sum(p.numel() for p in trainer.net.parameters()) + 2, device=device)


def _follower(rank, stopper, task: str, calls: int, optimizer: str | None) -> None:
    """A rank > 0: the same collectives as rank 0, in lock-step."""
    trainer = trainer_for(task, torch.device("cpu"), True, optimizer=optimizer, rank=rank)
    for _ in range(2):
        trainer.train_iteration()
    flat = meta_gradient_buffer(trainer, torch.device("cpu"))
    for _ in range(REDUCE_REPEATS):
        all_reduce_sum(flat)
    for _ in range(calls):
        trainer.train_iteration()


def _machine_matmul(device, threads: int, cpus) -> float:
    """The whole machine's matmul FLOP/s, as for the other modes (rank 0 runs on a share of it)."""
    with torch_threads(threads), pinned(cpus):
        return matmul_flops(device, repeats=5)


def _rank_zero(task: str, rank: Rank, device, iterations: int, blocks: int, optimizer: str | None, reference):
    """(trainer, first iteration's seconds, all-reduce seconds, blocks) of this process as rank 0."""
    init_group(rank, device, TIMEOUT_S)
    trainer = trainer_for(task, device, True, optimizer=optimizer, rank=rank)
    first = timed_once(trainer.train_iteration, device)  # compilation
    trainer.train_iteration()
    flat = meta_gradient_buffer(trainer, device)
    reduce_s = per_call(lambda: all_reduce_sum(flat), REDUCE_REPEATS, device)
    measured = blocks_of(lambda: per_call(trainer.train_iteration, iterations, device), blocks, device, reference)
    close_group()
    return trainer, first, reduce_s, measured


def measure(task: str, device, iterations: int, blocks: int, world: int, optimizer: str | None = None) -> dict:
    """`world` ranks meta-training the task, each with its share of this process's threads."""
    threads, all_threads = max(1, torch.get_num_threads() // world), torch.get_num_threads()
    all_cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    local = LocalRanks(world, threads, _follower, (task, blocks * iterations, optimizer), timeout_s=TIMEOUT_S)
    rank = Rank(0, world, 0)
    device = device_for(rank, device)
    with torch_threads(threads), pinned(local.own_cpus):
        trainer, first, reduce_s, measured = _rank_zero(task, rank, device, iterations, blocks, optimizer,
                                                        lambda: _machine_matmul(device, all_threads, all_cpus))
    local.join()
    flops = model_flops(trainer)
    _, summary = summarise(measured, flops)
    figures = iteration_figures(trainer, summary, first, flops, world, threads)
    steps, unroll = trainer.s.schedule.num_steps, trainer.s.schedule.unroll
    return {**figures, "all_reduce_seconds": reduce_s,
            "all_reduce_share": reduce_s * steps / unroll / figures["seconds_per_meta_iteration"]}
