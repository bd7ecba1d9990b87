"""Processes side by side on this machine, for work that needs nothing from the rest until it is done (a population's
members, a generalisation study's variants) and for torch.distributed's local ranks.

They are spawned (fork would copy torch's thread pools in an unusable state), each with its share of the threads,
pinned to cores of its own where the cores allow: on these machines two one-thread processes do about twice the
work of one two-thread process, whose every OpenMP barrier stalls when the host delays a vCPU
(docs/performance.md). They start with Ctrl-C and SIGTERM blocked and install their own handling before unblocking
them, so a signal sent to the process group while they start cannot kill one. ``SideBySide`` also brings their
log records and messages back over one queue and says which process ended without a word."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import pickle
import queue
import signal
from dataclasses import dataclass
from multiprocessing import get_context, resource_tracker
from typing import Callable, Iterator, Optional

from l2l_cli.core.checks import ConfigError
from l2l_cli.core.environment import configure_torch
from l2l_cli.core.signals import GracefulStop

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.2
PARENT_ENV = "L2L_PARENT_PID"  # the process that started them, for a process that outlives it while it starts


def machine_cpus() -> list:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def start_processes(count: int, threads: int, target: Callable, args_of: Callable[[int, Optional[list]], tuple],
                    name: str, first: int = 0) -> tuple[list, Optional[list]]:
    """Processes ``first`` .. ``count - 1`` running ``target(*args_of(index, cpus))``, ``cpus`` the cores that
    index's ``threads`` threads are pinned to (None where the machine has too few). Returns (the processes, the
    cores of index 0, which may be this process)."""
    own = process_cores(count, threads)
    ctx = get_context("spawn")
    os.environ[PARENT_ENV] = str(os.getpid())  # inherited by each spawned process
    resource_tracker.ensure_running()  # it unblocks the signals when it starts: started first
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    procs = []
    try:
        for index in range(first, count):
            proc = ctx.Process(target=target, args=args_of(index, own[index]), daemon=True, name=f"{name}-{index}")
            proc.start()
            procs.append(proc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return procs, own[0]


def process_cores(count: int, threads: int) -> list:
    """Each process's cores: ``threads`` of the machine's in turn, or None each where the machine has too few."""
    cpus = machine_cpus()
    if count * threads > len(cpus):
        return [None] * count
    return [cpus[index * threads: (index + 1) * threads] for index in range(count)]


@contextlib.contextmanager
def started_process(threads: int, cpus: Optional[list], graceful: bool = True):
    """A spawned process's start: (``graceful``) its own quiet graceful stop installed, then the stop signals
    unblocked, its cores and threads set; it ends when its parent does, however that ends. Yields the
    ``GracefulStop`` (None when not ``graceful``: the signals then end it as they would end any process)."""
    die_with_parent()
    with GracefulStop(quiet=True) if graceful else contextlib.nullcontext() as stopper:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if cpus:
            os.sched_setaffinity(0, cpus)
        configure_torch(threads)
        yield stopper


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent ends, so that a parent killed outright leaves no orphan still
    writing into its run dir; one whose parent ended before this ran ends now (elsewhere: nothing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.environ.get(PARENT_ENV, str(os.getppid())) != str(os.getppid()):
        os._exit(1)


class SideBySideError(RuntimeError):
    """A process side by side ended without a word (killed, crashed); the message names its work."""


class ProcessDied(RuntimeError):
    """A process side by side ended without a word (killed, crashed): ``index`` says which."""

    def __init__(self, index: int, exitcode: Optional[int]):
        super().__init__(f"exit code {exitcode}")
        self.index, self.exitcode = index, exitcode


@dataclass
class Failed:
    index: int
    error: BaseException


@dataclass
class _Closed:
    index: int


class Channel:
    """What a process side by side has of its parent: ``send`` a message, ``stop()`` a signal number (its own
    Ctrl-C or SIGTERM, or one its parent passed on; 0: none)."""

    def __init__(self, messages, stop, stopper: GracefulStop):
        self.messages, self._stop, self.stopper = messages, stop, stopper

    def send(self, message) -> None:
        self.messages.put(message)

    def stop(self) -> int:
        return (self.stopper.stop() if self.stopper is not None else 0) or self._stop.value


class SideBySide:
    """``count`` processes, each running ``work(index, channel, *args_of(index))`` with ``threads`` threads; what
    ``work`` raises comes back as a ``Failed`` message. Iterate ``messages()`` for what they send. ``graceful``: a
    process's first Ctrl-C or SIGTERM only asks it to stop (``channel.stop()``), as in meta-training; otherwise
    they end it at once."""

    def __init__(self, count: int, threads: int, work: Callable, args_of: Callable[[int], tuple], name: str,
                 graceful: bool = True):
        ctx = get_context("spawn")
        self.queue, self._stop = ctx.Queue(), ctx.Value("i", 0)
        level = logging.getLogger().getEffectiveLevel()
        self.procs, own = start_processes(count, threads, _side_main, lambda i, cpus: (
            work, i, threads, cpus, graceful, self.queue, self._stop, level, args_of(i)), name)
        self.pinned = own is not None

    def stop(self, signum: int = int(signal.SIGTERM)) -> None:
        """Ask every process to stop (each ends its work where it polls ``channel.stop()``)."""
        if not self._stop.value:
            self._stop.value = signum

    def messages(self, should_stop: Callable[[], int] = lambda: 0) -> Iterator:
        """Each process's messages until every one has closed; their log records are handled here as if they were
        this process's. A ``should_stop()`` signal is passed on; a process that died without closing raises
        ``ProcessDied`` (the others asked to stop first)."""
        closed: set = set()
        while len(closed) < len(self.procs):
            signum = should_stop()
            if signum:
                self.stop(signum)
            try:
                message = self.queue.get(timeout=POLL_S)
            except queue.Empty:
                for index, proc in enumerate(self.procs):
                    if index not in closed and not proc.is_alive() and proc.exitcode not in (0, None):
                        self.stop()
                        raise ProcessDied(index, proc.exitcode) from None
                continue
            if isinstance(message, logging.LogRecord):
                logging.getLogger(message.name).handle(message)
            elif isinstance(message, _Closed):
                closed.add(message.index)
            else:
                yield message

    def join(self, timeout: float = 60) -> None:
        """Wait for every process (asked to stop first); one still running after ``timeout`` is terminated."""
        self.stop()
        for proc in self.procs:
            proc.join(timeout=timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def _side_main(work: Callable, index: int, threads: int, cpus, graceful: bool, messages, stop, level: int,
               args: tuple) -> None:
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(messages)]  # the parent writes them where its own go
    root.setLevel(level)
    try:  # a signal that came while it started arrives as the signals are unblocked: reported as well
        with started_process(threads, cpus, graceful) as stopper:
            work(index, Channel(messages, stop, stopper), *args)
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        messages.put(Failed(index, picklable(exc)))
    finally:
        messages.put(_Closed(index))
        messages.close()
        messages.join_thread()


def picklable(exc: BaseException) -> BaseException:
    """The error itself where it survives crossing a process boundary, else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any error object that does not survive pickling
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def process_count(setting: Optional[int], key: str, jobs: int, job: str, threads: int, device, auto: bool) -> int:
    """How many processes side by side for ``jobs`` independent ``job``s: ``setting`` (the config value at ``key``)
    as set and checked, or for None one per thread, at most one per job, on the CPU where ``auto`` allows."""
    if setting is not None:
        if setting > 1 and device.type != "cpu":
            raise ConfigError(f"{key}: the processes it starts run on the CPU; with device={device.type} set {key}=1 "
                              f"or null, got {setting}")
        if setting > max(jobs, 1):
            raise ConfigError(f"{key}: at most one process per {job}, got {setting}")
        return setting
    if not auto or device.type != "cpu" or threads < 2 or jobs < 2:
        return 1
    return min(threads, jobs)
