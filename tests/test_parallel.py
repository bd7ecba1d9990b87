"""Meta-training in worker processes (train.workers): the same meta-gradient and training as one process, clear
errors when a worker fails or dies, and the auto setting's rules. Real spawned processes, tiny problems."""

from __future__ import annotations

import math
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, run_cli

from l2l_cli.meta.parallel import (
    AUTO_MIN_COORDINATE_STEPS,
    WorkerError,
    WorkerPool,
    WorkerSpec,
    resolve_workers,
    share_bounds,
)
from l2l_cli.meta.trainer import MetaTrainer, TrainSetup
from l2l_cli.meta.unroll import OptimizeeRun
from l2l_cli.optimizees.quadratic import QuadraticConfig, QuadraticFamily
from l2l_cli.optimizers.lstm import LSTMConfig
from l2l_cli.schemas import ConfigError, TrainLoopConfig, TruncatedScheduleConfig
from l2l_cli.seeding import generator

CPU = torch.device("cpu")


def _setup(tmp_path: Path, workers: int, bptt="manual", weighting="log", batch=5) -> TrainSetup:
    # 5 functions over 2 workers: shares of 2 and 3, so a wrong weighting of the shares would show
    loop = TrainLoopConfig(iterations=3, meta_lr=0.01, val_every=10, checkpoint_every=10, val_functions=8,
                           evaluate=False, bptt=bptt)
    return TrainSetup(family=QuadraticFamily(QuadraticConfig(dim=6)), optimizer=LSTMConfig(hidden_size=8),
                      schedule=TruncatedScheduleConfig(num_steps=12, unroll=4, weighting=weighting), loop=loop,
                      batch_size=batch, seed=3, data_seed=0, device=CPU, out_dir=tmp_path, workers=workers)


@pytest.mark.parametrize("bptt, weighting", [("manual", "log"), ("autograd", "uniform")])
def test_workers_give_the_single_process_meta_gradient_and_training(tmp_path, bptt, weighting):
    single = MetaTrainer(_setup(tmp_path / "one", 1, bptt, weighting))
    sharded = MetaTrainer(_setup(tmp_path / "two", 2, bptt, weighting))
    try:
        # one unroll on the same functions: the workers' weighted sum is the whole batch's meta-gradient
        s = single.s
        problem = s.family.sample(s.batch_size, s.schedule.num_steps, generator(0, "test"), CPU)
        local = OptimizeeRun(s.family, problem, single.net, False, weighting, single.manual).unroll(0, 4)
        run = sharded.worker_pool().run(generator(0, "test").get_state(), s.schedule.num_steps, sharded.net)
        remote = run.unroll(0, 4)
        for a, b in zip(local.grads, remote.grads, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(remote.loss_sum, local.loss_sum, rtol=1e-6, atol=0)
        torch.testing.assert_close(remote.final, local.final, rtol=1e-6, atol=0)
        # whole iterations: same functions, same meta-updates, same weights (float rounding apart)
        for _ in range(3):
            a, b = single.train_iteration(), sharded.train_iteration()
            assert math.isclose(a.mean_loss, b.mean_loss, rel_tol=1e-4)
            assert a.updates == b.updates == 3
        for p, q in zip(single.net.parameters(), sharded.net.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
        assert torch.equal(single.gen.get_state(), sharded.gen.get_state())  # resume and checkpoints agree
    finally:
        sharded.close()
    assert all(not proc.is_alive() for proc in run.pool.procs)


class BrokenFamily(QuadraticFamily):
    """Fails where only a worker calls it (the main process never selects a share)."""

    def select(self, problem, start, stop):
        raise ValueError(f"no share {start}:{stop} today")


def _pool(family, workers=2) -> WorkerPool:
    spec = WorkerSpec(family=family, optimizer=LSTMConfig(hidden_size=4), dtype=torch.float32, compiled=False,
                      manual=True, second_order=False, weighting="uniform", threads=1)
    return WorkerPool(spec, batch=4, workers=workers, num_weights=sum(p.numel() for p in _net().parameters()))


def _net():
    from l2l_cli.optimizers import build_learned

    return build_learned(LSTMConfig(hidden_size=4))


def test_a_failing_worker_reports_its_error(tmp_path):
    pool = _pool(BrokenFamily(QuadraticConfig(dim=3)))
    try:
        run = pool.run(generator(0, "test").get_state(), 8, _net())
        with pytest.raises(WorkerError, match=r"worker 0 failed: ValueError: no share 0:2 today"):
            run.unroll(0, 4)
    finally:
        pool.close()


def test_a_dead_worker_is_an_error_not_a_hang(tmp_path):
    pool = _pool(QuadraticFamily(QuadraticConfig(dim=3)))
    try:
        net = _net()
        pool.run(generator(0, "test").get_state(), 8, net).unroll(0, 4)  # works
        pool.procs[1].kill()
        pool.procs[1].join(timeout=10)
        with pytest.raises(WorkerError, match=r"worker 1 exited unexpectedly \(exit code -9\)"):
            pool.run(generator(0, "test").get_state(), 8, net).unroll(0, 4)
    finally:
        pool.close()
    assert all(not proc.is_alive() for proc in pool.procs)


def test_workers_leave_ctrl_c_and_sigterm_to_the_main_process():
    """A terminal's Ctrl-C goes to the whole process group: the workers must survive it, also while they are still
    starting (importing torch), so that the main process can finish its iteration and checkpoint."""
    pool = _pool(QuadraticFamily(QuadraticConfig(dim=3)))
    try:
        for proc in pool.procs:
            os.kill(proc.pid, signal.SIGINT)  # right after the start: still in the interpreter's bootstrap
        net = _net()
        run = pool.run(generator(0, "test").get_state(), 8, net)
        run.unroll(0, 4)
        for proc in pool.procs:
            os.kill(proc.pid, signal.SIGINT)
            os.kill(proc.pid, signal.SIGTERM)
        run.unroll(4, 4)
        assert all(proc.is_alive() for proc in pool.procs)
    finally:
        pool.close()


def test_shares_cover_the_batch_in_order():
    assert share_bounds(5, 2) == [0, 2, 5]
    assert share_bounds(128, 2) == [0, 64, 128]
    assert share_bounds(7, 3) == [0, 2, 5, 7]


@pytest.mark.parametrize("setting, threads, batch, params, work, device, expected", [
    (None, 2, 128, 10, 2e8, CPU, 2),  # the default quadratic run on 2 cores
    (None, 1, 128, 10, 2e8, CPU, 1),  # one thread: no workers
    (None, 2, 1, 15910, 2e9, CPU, 1),  # one function (the MNIST default) cannot be split
    (None, 2, 128, 10, AUTO_MIN_COORDINATE_STEPS / 2, CPU, 1),  # too short to repay the workers' start
    (None, 64, 128, 10, 2e8, CPU, 2),  # 1280 coordinates: at most 2 workers of >= 512
    (None, 8, 64, 1000, 2e8, torch.device("cuda"), 1),  # GPU: one process
    (3, 1, 8, 10, 1.0, CPU, 3),  # as set
])
def test_resolve_workers(setting, threads, batch, params, work, device, expected):
    assert resolve_workers(setting, threads, batch, params, work, device) == expected


def test_resolve_workers_refuses_what_cannot_work():
    with pytest.raises(ConfigError, match=r"train.workers: each worker takes a share of optimizee.batch_size=4 "
                                          r"functions, so at most 4, got 5"):
        resolve_workers(5, 2, 4, 10, 1e9, CPU)
    with pytest.raises(ConfigError, match=r"train.workers: worker processes run on the CPU; with device=cuda"):
        resolve_workers(2, 2, 4, 10, 1e9, torch.device("cuda"))


def test_families_select_a_share_exactly():
    from l2l_cli.optimizees import build_family
    from l2l_cli.optimizees.mlp import MLPConfig

    tiny_mlp = replace(MLPConfig(), hidden=3, minibatch=4)
    for family in (QuadraticFamily(QuadraticConfig(dim=4)), build_family(tiny_mlp)):
        problem = family.sample(5, 3, generator(1, "train"), CPU)
        theta = family.initial_params(problem)
        share = family.select(problem, 2, 4)
        assert torch.equal(family.initial_params(share), theta[2:4])
        for step in range(3):
            assert torch.equal(family.loss(share, theta[2:4], step), family.loss(problem, theta, step)[2:4])


def test_cli_trains_with_workers(tmp_path):
    out = run_cli("train", *TINY_TRAIN, "train.workers=2", "threads=2", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "meta-training on 2 worker processes" in out.stdout + out.stderr
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
