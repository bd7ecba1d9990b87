"""Data-parallel meta-training on torch.distributed: local ranks (train.workers=N), torchrun, failures that name
the rank, time-outs instead of hangs, resume with another number of ranks. Real processes, gloo, tiny problems."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_TRAIN, run_cli

from l2l_cli.core.checkpoints import load_checkpoint
from l2l_cli.core.random_streams import generator
from l2l_cli.core.registry import ESTIMATORS
from l2l_cli.core.schemas import ConfigError, TrainLoopConfig
from l2l_cli.meta.distributed import DistributedError, Rank, from_environment, share
from l2l_cli.meta.launch import run_training
from l2l_cli.meta.policy import AUTO_MIN_COORDINATE_STEPS, resolve_workers
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.meta.setup import TrainSetup
from l2l_cli.optimizees.quadratic import QuadraticConfig, QuadraticFamily
from l2l_cli.optimizers.learned.lstm import LSTMConfig

CPU = torch.device("cpu")


def _setup(tmp_path: Path, workers: int, family=None, iterations=3, estimator="tbptt", **loop) -> TrainSetup:
    # 5 functions over 2 ranks: shares of 2 and 3, so a wrong weighting of the shares would show
    loop = TrainLoopConfig(iterations=iterations, meta_lr=0.01, val_every=2, checkpoint_every=1, val_functions=7,
                           evaluate=False, **loop)
    return TrainSetup(family=family or QuadraticFamily(QuadraticConfig(dim=6)), optimizer=LSTMConfig(hidden_size=8),
                      schedule=TruncatedScheduleConfig(num_steps=12, unroll=4, weighting="log"), loop=loop,
                      batch_size=5, seed=3, data_seed=0, device=CPU, out_dir=tmp_path, workers=workers,
                      estimator=ESTIMATORS.get(estimator).default_config())


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def _close(a: dict, b: dict, tol=1e-6) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=tol, atol=tol) for k in a)


def test_shares_cover_the_batch_in_rank_order():
    assert [share(5, Rank(k, 2)) for k in range(2)] == [(0, 2), (2, 5)]
    assert [share(7, Rank(k, 3)) for k in range(3)] == [(0, 2), (2, 5), (5, 7)]
    assert [share(2, Rank(k, 2)) for k in range(2)] == [(0, 1), (1, 2)]


@pytest.mark.parametrize("estimator", ["tbptt", "pes"])
def test_local_ranks_train_what_one_process_trains(tmp_path, estimator):
    """Two ranks: the same validation history and checkpoint as one process, up to float rounding; the
    generator (what resume restores) is identical. PES: every rank draws all functions' perturbations."""
    single = run_training(_setup(tmp_path / "one", 1, estimator=estimator), 1)
    ranks = run_training(_setup(tmp_path / "two", 2, estimator=estimator), 1)
    a, b = single.population.members[0], ranks.population.members[0]
    assert [h[0] for h in a.history] == [h[0] for h in b.history] == [0, 2, 3]
    for (_, x), (_, y) in zip(a.history, b.history, strict=True):
        assert abs(x - y) <= 1e-5 * abs(x)
    assert _close(_weights(tmp_path / "one" / "checkpoints" / "last.pt"),
                  _weights(tmp_path / "two" / "checkpoints" / "last.pt"))
    assert torch.equal(load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["rng"],
                       load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["rng"])


def test_resume_with_another_number_of_ranks(tmp_path):
    """3 iterations on 2 ranks, then 2 more on 1 process (and the reverse) end where 5 straight iterations end."""
    straight = tmp_path / "straight"
    run_training(_setup(straight, 1, iterations=5), 1)
    for first, second, name in ((2, 1, "two_then_one"), (1, 2, "one_then_two")):
        run_dir = tmp_path / name
        run_training(_setup(run_dir, first, iterations=3), 1)
        run_training(_setup(run_dir, second, iterations=5), 1, resume=True)
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 5
        assert _close(_weights(run_dir / "checkpoints" / "last.pt"), _weights(straight / "checkpoints" / "last.pt"))


class FailingOnRank1(QuadraticFamily):
    """Fails where only rank 1 goes (its share of a batch starts after function 0)."""

    def __init__(self, cfg, how: str):
        super().__init__(cfg)
        self.how = how

    def select(self, problem, start, stop):
        if start > 0 and len(problem) == 5:
            if self.how == "raise":
                raise ValueError("no share for rank 1 today")
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "hang":
                time.sleep(600)
        return super().select(problem, start, stop)


@pytest.mark.parametrize("how, message", [
    ("raise", r"rank 1 failed: ValueError: no share for rank 1 today"),
    ("kill", r"rank 1 exited unexpectedly \(exit code -9\)"),
    ("hang", r"a rank stopped answering within train.dist_timeout"),
])
def test_a_failing_rank_ends_the_run_with_one_line_naming_it(tmp_path, how, message):
    family = FailingOnRank1(QuadraticConfig(dim=6), how)
    setup = _setup(tmp_path, 2, family=family, dist_timeout=4.0)
    start = time.monotonic()
    with pytest.raises(DistributedError, match=message):
        run_training(setup, 1)
    assert time.monotonic() - start < 120  # never a hang
    assert not torch.distributed.is_initialized()


def test_the_environment_names_a_launched_rank(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    assert from_environment() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_environment() == Rank(1, 4, 1)


def test_torchrun_trains_what_one_process_trains(tmp_path):
    """`torchrun --nproc-per-node=2 -m l2l_cli train`: rank 0 writes the run dir named on the command line, rank 1
    keeps Hydra's files elsewhere, and the checkpoint is the single process's to float rounding."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    args = [*TINY_TRAIN, "train.iterations=3"]
    single = run_cli("train", *args, f"hydra.run.dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    ranks = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "l2l_cli", "train", *args,
                            f"hydra.run.dir={tmp_path / 'two'}"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert "distributed meta-training: 2 ranks (gloo backend); rank 0 writes" in " ".join(ranks.stderr.split() +
                                                                                        ranks.stdout.split())
    assert _close(_weights(tmp_path / "one" / "checkpoints" / "last.pt"),
                  _weights(tmp_path / "two" / "checkpoints" / "last.pt"))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def _two_torchrun_nodes(tmp_path, attempt: int):
    """Both nodes' exit codes and outputs; each node writes to its own file: with pipes read one after the other, a
    node whose agent logs more than a pipe holds would block on write while the other waits for it at torchrun's
    exit barrier."""
    from l2l_cli.meta.distributed import free_port

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    endpoint = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"try{attempt}_node{k}.log" for k in range(2)]
    nodes = []
    for k, log in enumerate(logs):
        with log.open("w") as sink:
            nodes.append(subprocess.Popen([torchrun, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                                           f"--rdzv-endpoint={endpoint}", f"--rdzv-id=l2l-test-{attempt}",
                                           f"--node-rank={k}", "-m", "l2l_cli", "train", *TINY_TRAIN,
                                           "train.iterations=3", f"hydra.run.dir={tmp_path / f'run{attempt}'}"],
                                          cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT))
    try:
        for node in nodes:
            node.wait(timeout=150)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for node in nodes:
            node.kill()
            node.wait()
    return [node.returncode for node in nodes], [log.read_text() for log in logs]


def test_torchrun_over_two_nodes_meeting_at_a_rendezvous(tmp_path):
    """`--nnodes=2`: two torchrun agents (here both on this machine) meet at a c10d rendezvous, one rank each."""
    attempt = 0
    codes, outputs = _two_torchrun_nodes(tmp_path, attempt)
    if codes != [0, 0] and "3/3" in outputs[0] + outputs[1]:
        # trained, then stuck in torchrun's own exit (seen once in CI on a loaded 2-core machine, never here in
        # dozens of runs): one more try on a fresh port; our code failing fails both
        attempt = 1
        codes, outputs = _two_torchrun_nodes(tmp_path, attempt)
    assert codes == [0, 0], outputs
    assert "distributed meta-training: 2 ranks" in " ".join(" ".join(outputs).split())
    assert load_checkpoint(tmp_path / f"run{attempt}" / "checkpoints" / "last.pt")["iteration"] == 3


def test_cli_trains_on_local_ranks(tmp_path):
    out = run_cli("train", *TINY_TRAIN, "train.workers=2", "threads=2", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "meta-training on 2 ranks (torch.distributed, gloo)" in " ".join((out.stdout + out.stderr).split())
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


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
    with pytest.raises(ConfigError, match=r"train.workers: each rank takes a share of optimizee.batch_size=4 "
                                          r"functions, so at most 4, got 5"):
        resolve_workers(5, 2, 4, 10, 1e9, CPU)
    with pytest.raises(ConfigError, match=r"train.workers: the ranks it starts run on the CPU; with device=cuda"):
        resolve_workers(2, 2, 4, 10, 1e9, torch.device("cuda"))


def test_families_select_a_share_exactly():
    from l2l_cli.optimizees import build_family
    from l2l_cli.optimizees.mnist import MLPConfig

    tiny_mlp = replace(MLPConfig(), hidden=3, minibatch=4)
    for family in (QuadraticFamily(QuadraticConfig(dim=4)), build_family(tiny_mlp)):
        problem = family.sample(5, 3, generator(1, "train"), CPU)
        theta = family.initial_params(problem)
        share = family.select(problem, 2, 4)
        assert torch.equal(family.initial_params(share), theta[2:4])
        for step in range(3):
            assert torch.equal(family.loss(share, theta[2:4], step), family.loss(problem, theta, step)[2:4])


def test_ranks_survive_a_ctrl_c_while_they_start_and_stop_together(tmp_path):
    """A Ctrl-C reaching the local ranks while they are still starting (importing torch) does not kill them: they
    take it as a stop request, the ranks agree on it, and the run stops after its first iteration with last.pt
    written and exit code 130, as for a Ctrl-C to a single process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "l2l_cli", "train", *TINY_TRAIN, "train.iterations=400",
                             "train.workers=2", "threads=2", f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = []
    deadline = time.time() + 60
    while not children and time.time() < deadline:
        out = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "multiprocessing.spawn"], capture_output=True,
                             text=True)
        children = [int(pid) for pid in out.stdout.split()]
        time.sleep(0.01)
    assert children, "no rank was started"
    for pid in children:
        os.kill(pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "last checkpoint written to" in stderr and "Traceback" not in stderr and "failed" not in stderr
    assert 1 <= load_checkpoint(tmp_path / "checkpoints" / "last.pt")["iteration"] < 400
