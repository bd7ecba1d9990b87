"""Meta-training on several cores at once: the batch's functions split over worker processes, one meta-gradient.

Why processes: the default quadratic meta-iteration (128 functions x 10 coordinates) is a long chain of small
products and elementwise kernels, which MKL runs barely faster on two threads than on one; independent one-thread
processes do scale (README, "Performance"). Python threads cannot do the same: the compiled kernels hold the GIL.

Each worker keeps its functions' optimizee state (theta, the learned optimizer's state, the gradient) across a
run's truncated unrolls, as ``OptimizeeRun`` does in one process. Before each unroll the main process sends the
learned optimizer's current weights; each worker returns the meta-gradient of its own functions (a mean over them),
and the main process adds these up weighted by each worker's share of the functions, then clips and steps as
usual. Same numbers as one process up to float rounding (tested). Workers draw their functions from the same
generator state as the main process, so the functions, resume and checkpoints are those of a single-process run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing import resource_tracker

import torch

from l2l_cli.meta.unroll import OptimizeeRun, UnrollGradient
from l2l_cli.meta.weights import copy_into, split_like
from l2l_cli.optimizees.base import Family
from l2l_cli.schemas import ConfigError

log = logging.getLogger(__name__)

# a worker's start (a fresh interpreter importing torch, then compiling) costs a few seconds; below this much work
# (functions x coordinates x steps x iterations) a run is over before that is repaid
AUTO_MIN_COORDINATE_STEPS = 2e7
# fewer coordinates than this per worker and each step is all per-call overhead
MIN_COORDINATES_PER_WORKER = 512
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # the main process's to handle (signals.GracefulStop)


class WorkerError(RuntimeError):
    """A meta-training worker process failed or died; the message says which and why."""


def resolve_workers(setting: int | None, threads: int, batch: int, num_params: int, work: float,
                    device: torch.device) -> int:
    """Worker processes for meta-training: as set (checked), or for null (auto) one per thread when the run is long
    enough and each worker gets enough coordinates; 1 means everything in this process."""
    if setting is not None:
        if setting > 1 and device.type != "cpu":
            raise ConfigError(f"train.workers: worker processes run on the CPU; with device={device.type} set "
                              f"train.workers=1 or null, got {setting}")
        if setting > batch:
            raise ConfigError(f"train.workers: each worker takes a share of optimizee.batch_size={batch} functions, "
                              f"so at most {batch}, got {setting}")
        return setting
    if device.type != "cpu" or threads < 2 or work < AUTO_MIN_COORDINATE_STEPS:
        return 1
    return max(1, min(threads, batch, batch * num_params // MIN_COORDINATES_PER_WORKER))


@dataclass
class WorkerSpec:
    """What a worker builds its side from (pickled once, at its start)."""

    family: Family
    optimizer: object  # the learned optimizer's config dataclass
    dtype: torch.dtype
    compiled: bool
    manual: bool  # hand-written first-order BPTT, else autograd
    second_order: bool
    weighting: str
    threads: int


def share_bounds(batch: int, workers: int) -> list[int]:
    """Function index bounds of each worker's share: as equal as possible, in order."""
    return [round(k * batch / workers) for k in range(workers + 1)]


class WorkerPool:
    """``workers`` processes, each owning the functions between two of ``share_bounds`` in every run.

    The learned optimizer's weights go out, and each worker's meta-gradient comes back, through shared memory; the
    pipes carry only the commands and a few numbers. Where the cores allow, each worker is pinned to cores of its own
    (unpinned, the scheduler moves them about).
    """

    def __init__(self, spec: WorkerSpec, batch: int, workers: int, num_weights: int):
        bounds = share_bounds(batch, workers)
        self.shares = [(stop - start) / batch for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
        self.batch = batch
        self.weights = torch.zeros(num_weights, dtype=spec.dtype).share_memory_()
        self.grads = torch.zeros(workers, num_weights, dtype=spec.dtype).share_memory_()
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        pin = workers * spec.threads <= len(cpus)
        ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools in an unusable state
        self.procs, self.conns = [], []
        # Workers start with Ctrl-C and SIGTERM blocked (the mask is inherited), so one sent to the process group
        # while they are still starting cannot kill them before they ignore it. multiprocessing's resource tracker
        # unblocks both when it starts (on the first spawn, in whichever process unpickles shared tensors first):
        # started here before the mask, and the workers' start takes plain arguments only.
        resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for k in range(workers):
                parent, child = ctx.Pipe()
                own_cpus = cpus[k * spec.threads: (k + 1) * spec.threads] if pin else None
                proc = ctx.Process(target=_worker_main, daemon=True, name=f"l2l-meta-worker-{k}",
                                   args=(child, k, bounds[k], bounds[k + 1], own_cpus))
                proc.start()
                child.close()  # so this end sees EOF when the worker dies
                self.procs.append(proc)
                self.conns.append(parent)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.broadcast(("init", spec, self.weights, self.grads))
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self.conns)
        log.info("meta-training on %d worker processes, %d thread(s) each%s", workers, spec.threads,
                 ", pinned to cores" if pin else "")

    def run(self, gen_state: torch.Tensor, num_steps: int, net: torch.nn.Module) -> "ShardedRun":
        """Start one optimizee run: each worker draws the batch from ``gen_state`` (the state the main process drew
        it from) and keeps its share."""
        state = gen_state.numpy().tobytes()
        self.broadcast(("begin", state, self.batch, num_steps))
        return ShardedRun(self, net)

    def broadcast(self, message) -> None:
        for k, conn in enumerate(self.conns):
            try:
                conn.send(message)
            except OSError:  # a broken pipe: the worker is gone
                self.receive(k)  # raises with what the worker said, or how it ended

    def receive(self, k: int):
        try:
            reply = self.conns[k].recv()
        except (EOFError, OSError) as exc:
            self.procs[k].join(timeout=5)
            raise WorkerError(f"meta-training worker {k} exited unexpectedly (exit code {self.procs[k].exitcode})"
                              ) from exc
        if reply[0] == "error":
            raise WorkerError(f"meta-training worker {k} failed: {reply[1]}")
        return reply

    def close(self) -> None:
        self._finalizer()


def _shutdown(procs, conns) -> None:
    for conn in conns:
        try:
            conn.send(("close",))
        except OSError:
            pass
        conn.close()
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)


class ShardedRun:
    """``OptimizeeRun``'s interface over a ``WorkerPool``: each unroll's meta-gradient is the workers' sum."""

    def __init__(self, pool: WorkerPool, net: torch.nn.Module):
        self.pool, self.net = pool, net

    def unroll(self, start: int, steps: int) -> UnrollGradient:
        pool, params = self.pool, list(self.net.parameters())
        with torch.no_grad():
            pool.weights.copy_(torch.nn.utils.parameters_to_vector(params))
        pool.broadcast(("unroll", start, steps))
        total, loss_sum, finals = None, 0.0, []
        for k, share in enumerate(pool.shares):
            _, worker_loss_sum, final = pool.receive(k)
            # each worker's objective is a mean over its own functions: weighted by its share, a mean over all
            grad = pool.grads[k] * share
            total = grad if total is None else total + grad
            loss_sum += worker_loss_sum * share
            finals.append(torch.from_numpy(final))
        grads = [g.to(p.device) for g, p in zip(split_like(total, params), params, strict=True)]
        device = params[0].device
        return UnrollGradient(grads, torch.tensor(loss_sum, dtype=total.dtype, device=device),
                              torch.cat(finals).to(device))


def _worker_main(conn, index: int, start: int, stop: int, cpus) -> None:
    # the main process handles Ctrl-C and SIGTERM (it finishes the iteration, then checkpoints); a worker that died
    # of them would leave it mid-unroll. Workers end when told, or when the main process's end of the pipe closes.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # also discards one that arrived while blocked
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        _, spec, weights, grads = conn.recv()  # ("init", ...)
        _serve(conn, spec, start, stop, weights, grads[index])
    except EOFError:
        pass
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the main process must hear of it
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        except OSError:
            pass


def _serve(conn, spec: WorkerSpec, start: int, stop: int, weights: torch.Tensor, grad_out: torch.Tensor) -> None:
    from l2l_cli.meta.trainer import gradient_estimator
    from l2l_cli.optimizers import build_learned
    from l2l_cli.optimizers.compiled import maybe_compile
    from l2l_cli.runtime import configure_torch

    configure_torch(spec.threads)
    net = build_learned(spec.optimizer).to(spec.dtype)
    compiled = maybe_compile(net, spec.compiled)
    manual = gradient_estimator(net, spec.manual, spec.second_order, compiled)
    params = list(net.parameters())
    gen = torch.Generator()
    run = None
    while True:
        message = conn.recv()
        if message[0] == "close":
            return
        if message[0] == "begin":
            _, state, batch, num_steps = message
            gen.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
            problem = spec.family.select(spec.family.sample(batch, num_steps, gen, "cpu"), start, stop)
            run = OptimizeeRun(spec.family, problem, net, spec.second_order, spec.weighting, manual)
        elif message[0] == "unroll":
            _, first, steps = message
            copy_into(params, weights)
            result = run.unroll(first, steps)
            grad_out.copy_(torch.nn.utils.parameters_to_vector(result.grads))
            conn.send(("ok", float(result.loss_sum), result.final.numpy()))
