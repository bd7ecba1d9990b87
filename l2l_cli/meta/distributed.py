"""Data-parallel meta-training on torch.distributed, across processes and machines.

Every rank draws the same batch of functions (the generators agree: same seed, same state after resume) and runs
its own share of it; after each unroll the meta-gradients, weighted by each rank's share, are all-reduced, and every
rank clips and steps its own copy of the meta-optimizer with the same numbers, so the ranks stay identical without a
coordinator and a run's result does not depend on how the work is split (up to float rounding). Validation is split
the same way. Rank 0 alone writes checkpoints, TensorBoard and results.

Ranks come from torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), from a SLURM job step with
several tasks (submitit's environment, set up by its launcher), or from ``spawn_local`` (`l2l train
train.workers=N` on one machine). Backends: gloo on the CPU, NCCL on GPUs. Collectives time out after
``train.dist_timeout`` seconds, and a rank that fails leaves its error in the rendezvous store, so the others end
with one line naming it instead of hanging.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist

from l2l_cli.core.processes import start_processes, started_process
from l2l_cli.evaluation.rollout import run
from l2l_cli.meta.estimators.base import EstimatorRun, UnrollGradient
from l2l_cli.meta.weights import split_like

log = logging.getLogger(__name__)

FAILED_KEY = "l2l_failed_rank_{}"


class DistributedError(RuntimeError):
    """A rank failed or stopped answering; the message names it (``rank``: which, where known)."""

    def __init__(self, message: str, rank: Optional[int] = None):
        super().__init__(message)
        self.rank = rank


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    local_rank: int = 0

    @property
    def writes(self) -> bool:
        """Rank 0 alone writes checkpoints, curves and results."""
        return self.rank == 0


def from_environment() -> Optional[Rank]:
    """This process's rank when a launcher started it as one of a group: torchrun's variables (also a group of one,
    e.g. one GPU with NCCL), or a SLURM job step's tasks (through submitit, whose helper sets the same variables);
    None for a process started on its own."""
    if all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):  # torchrun, also with one rank
        return Rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if os.environ.get("SUBMITIT_EXECUTOR"):  # a job submitit started (SLURM, or its local executor)
        import submitit
        from submitit.helpers import TorchDistributedEnvironment

        if submitit.JobEnvironment().num_tasks > 1:
            env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            return Rank(env.rank, env.world_size, env.local_rank)
    return None


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(rank: Rank, device: torch.device) -> torch.device:
    """Each rank on a GPU of its own (by local rank) when the run is on CUDA."""
    if device.type == "cuda":
        return torch.device("cuda", rank.local_rank % max(1, torch.cuda.device_count()))
    return device


def init_group(rank: Rank, device: torch.device, timeout_s: float) -> None:
    """Join the process group (env:// rendezvous) unless already in one."""
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), rank=rank.rank, world_size=rank.world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def join_group(rank: Rank, device: torch.device, timeout_s: float) -> torch.device:
    """This launched rank's device, with the process group joined (once)."""
    device = device_for(rank, device)
    init_group(rank, device, timeout_s)
    return device


def leave_together() -> None:
    """After a run every rank finished: wait for all before any tears its group down. A rank that destroyed its
    group while another was still in its last collective aborted now and then ("terminate called without an active
    exception": 5 of 65 torchrun runs of 2 ranks on a loaded machine)."""
    collective(dist.barrier)


def close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _store():
    """The process group's rendezvous store (torch exposes no public accessor)."""
    return dist.distributed_c10d._get_default_store()


def report_failure(rank: Rank, exc: BaseException) -> None:
    """Leave this rank's error where the others look when a collective fails."""
    try:
        store = _store()
        store.set(FAILED_KEY.format(rank.rank), f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    except Exception:  # noqa: BLE001 - the store may be gone with rank 0
        pass


def failed_ranks(world: int) -> dict:
    """rank -> error of every rank that reported one."""
    found = {}
    try:
        store = _store()
        for k in range(world):
            key = FAILED_KEY.format(k)
            if store.check([key]):
                found[k] = store.get(key).decode()
    except Exception:  # noqa: BLE001
        pass
    return found


def collective(fn: Callable, *args, **kwargs):
    """Run a collective; a failure or time-out becomes one line naming the rank that failed, where it said so."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistBackendError) as exc:
        world = dist.get_world_size() if dist.is_initialized() else 0
        failed = failed_ranks(world)
        if failed:
            k, message = sorted(failed.items())[0]
            raise DistributedError(f"rank {k} failed: {message}", k) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(f"a rank stopped answering within train.dist_timeout ({first})") from None


def shared_value(key: str, value: str, rank: Rank) -> str:
    """Rank 0's ``value`` on every rank, through the rendezvous store (no pickles)."""
    store = _store()
    if rank.rank == 0:
        store.set(f"l2l_{key}", value)
        return value
    return store.get(f"l2l_{key}").decode()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
    return tensor


def agree_stop(signum: int, device: torch.device) -> int:
    """The stop signal any rank received (0: none), so that all ranks stop after the same iteration."""
    flag = torch.tensor([signum], dtype=torch.int64, device=device)
    collective(dist.all_reduce, flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def share(batch: int, rank: Rank) -> tuple[int, int]:
    """The functions start..stop-1 of a batch that this rank runs: shares as equal as possible, in rank order."""
    return round(rank.rank * batch / rank.world), round((rank.rank + 1) * batch / rank.world)


class DistributedRun:
    """``OptimizeeRun``'s interface over this rank's share of a batch: each unroll's meta-gradient, loss sum and
    mean final loss are those of the whole batch (all-reduced, each rank's terms weighted by its share)."""

    def __init__(self, run: EstimatorRun, weight: float):
        self.run, self.weight = run, weight

    def unroll(self, start: int, steps: int) -> UnrollGradient:
        result = self.run.unroll(start, steps)
        parts = [g.reshape(-1) for g in result.grads] + [result.loss_sum.reshape(1), result.final.mean().reshape(1)]
        flat = all_reduce_sum(torch.cat(parts) * self.weight)
        size = flat.numel() - 2
        return UnrollGradient(split_like(flat[:size], result.grads), flat[size], flat[size + 1: size + 2])


@torch.no_grad()
def distributed_score(family, problem, rule, num_steps: int, rank: Rank) -> float:
    """``rollout.selection_score`` with the functions split over the ranks: the mean expected final loss over all of
    them, +inf when any run diverged on any rank."""
    n = len(problem)
    start, stop = share(n, rank)
    totals = torch.zeros(2, dtype=torch.float64)  # sum of expected final losses, non-finite runs
    if stop > start:
        losses, final = run(family, family.select(problem, start, stop), rule, num_steps)
        finite = bool(torch.isfinite(losses).all() and torch.isfinite(final).all())
        totals[0] = float(final.double().sum()) if finite else 0.0
        totals[1] = 0.0 if finite else 1.0
    device = next(rule.parameters()).device if isinstance(rule, torch.nn.Module) else torch.device("cpu")
    totals = all_reduce_sum(totals.to(device)).cpu()
    return float("inf") if totals[1] > 0 else float(totals[0]) / n


# -- ranks on this machine -------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRanks:
    """Ranks 1..world-1 as processes on this machine (``core.processes``), each running ``target(rank, *args)``;
    this process is rank 0 and runs the same target itself. Each rank gets ``threads`` torch threads, pinned to
    cores of its own where the cores allow. Stop signals reach them through the process group; they end with the
    run."""

    def __init__(self, world: int, threads: int, target: Callable, args: tuple, timeout_s: float):
        self.world = world
        port = free_port()
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        self.procs, self.own_cpus = start_processes(world, threads, _local_rank_main, lambda k, cpus: (
            Rank(k, world, k), port, threads, cpus, timeout_s, target, args), "l2l-rank", first=1)
        self.pin = self.own_cpus is not None

    def check(self, wait: float = 5.0) -> None:
        """A rank that ended without reporting (killed, crashed): one line naming it. Its end may reach us after
        the failed collective did, so look for up to ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            for k, proc in enumerate(self.procs, start=1):
                if not proc.is_alive() and proc.exitcode not in (0, None):
                    raise DistributedError(f"rank {k} exited unexpectedly (exit code {proc.exitcode})", k)
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def join(self, timeout: float = 30) -> None:
        for proc in self.procs:
            proc.join(timeout=timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def _local_rank_main(rank: Rank, port: int, threads: int, cpus, timeout_s: float, target: Callable,
                     args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank.rank),
                      WORLD_SIZE=str(rank.world), LOCAL_RANK=str(rank.local_rank))
    logging.basicConfig(level=logging.WARNING)
    with started_process(threads, cpus) as stopper:
        try:
            init_group(rank, torch.device("cpu"), timeout_s)
            target(rank, stopper, *args)
        except DistributedError:
            os._exit(3)  # rank 0 reports it; nothing more to say here
        except BaseException as exc:  # noqa: BLE001 - the other ranks must hear of it
            report_failure(rank, exc)
            log.error("rank %d failed: %s\n%s", rank.rank, exc, traceback.format_exc())
            os._exit(1)
        finally:
            close_group()
