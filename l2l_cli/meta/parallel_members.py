"""A population's members side by side: processes of their own on this machine, each with its share of the threads,
pinned to cores of its own, each training its members (k, k + N, ...) exactly as one process would train them one
after another (same functions, same checkpoints and curves; results equal up to the float rounding of the thread
count). Independent meta-trainings need nothing from each other, and on these machines two one-thread processes do
about twice the work of one two-thread process (docs/performance.md#population-members-side-by-side).

This process starts them, shows their progress, passes a stop signal on and reports their end: a member that fails
stops the others after their current iteration (last.pt written) and its error is the run's."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from l2l_cli.core.processes import Failed, ProcessDied, SideBySide, SideBySideError
from l2l_cli.meta.population import (
    MemberResult,
    PopulationResult,
    member_resume_files,
    population_result,
    report_member,
    train_member,
)
from l2l_cli.meta.setup import TrainSetup
from l2l_cli.meta.stopping import StopRequested

log = logging.getLogger("l2l.train")


@dataclass
class _Progress:
    kind: str  # start | iteration | done
    member: int
    result: MemberResult
    stats: object = None


def train_side_by_side(setup: TrainSetup, population: int, resume=False, *,
                       writer_for: Optional[Callable[[Path], object]] = None,
                       on_start: Optional[Callable[[int, object], None]] = None,
                       on_iteration: Optional[Callable[[int, object, object], None]] = None,
                       should_stop: Callable[[], int] = lambda: 0) -> PopulationResult:
    """train_population's result with ``setup.member_processes`` processes training the members; the callbacks run
    here, ``on_start`` / ``on_iteration`` with a ``MemberResult`` where a sequential run passes the trainer.
    ``writer_for`` must be picklable (a class or module-level function): each process makes its members' writers."""
    count = setup.member_processes
    threads = max(1, torch.get_num_threads() // count)
    files = member_resume_files(resume, setup.out_dir, population)
    owned = {i: list(range(i, population, count)) for i in range(count)}
    side = SideBySide(count, threads, _train_members, lambda i: (
        setup, population, [(k, files[k]) for k in owned[i]], writer_for), "l2l-members")
    log.info("meta-training %d members in %d processes side by side, %d thread(s) each%s", population, count,
             threads, ", pinned to cores" if side.pinned else "")
    results: dict = {}
    failure: Optional[BaseException] = None
    stopped: Optional[StopRequested] = None
    try:
        for message in side.messages(should_stop):
            if isinstance(message, Failed):
                if isinstance(message.error, StopRequested):
                    stopped = stopped or message.error
                else:
                    failure = failure or message.error
                    side.stop()  # the others stop after their iteration, last.pt written
            elif message.kind == "start" and on_start:
                on_start(message.member, message.result)
            elif message.kind == "iteration" and on_iteration:
                on_iteration(message.member, message.result, message.stats)
            elif message.kind == "done":
                results[message.member] = message.result
                report_member(message.member, population, message.result)
    except ProcessDied as died:
        failure = failure or SideBySideError(
            f"the process training population member(s) {', '.join(map(str, owned[died.index]))} exited "
            f"unexpectedly ({died})")
    finally:
        side.join()
    if failure is not None:
        raise failure
    if stopped is not None or len(results) < population:
        signum = stopped.signum if stopped is not None else int(should_stop())
        raise StopRequested(f"stopped by signal {signum}: every started member's last.pt is written (continue "
                            "with resume=true)", signum)
    return population_result([results[k] for k in range(population)], setup.out_dir, writes=True)


def _train_members(index: int, channel, setup: TrainSetup, population: int, members: list, writer_for) -> None:
    """One process's members, one after another; a failure or stop ends it (raised: its parent hears of it)."""
    for k, resume_from in members:
        result = train_member(
            setup, k, population, resume_from, writer_for=writer_for,
            on_start=lambda k, t: channel.send(_Progress("start", k, MemberResult.of(t))),
            on_iteration=lambda k, t, stats: channel.send(_Progress("iteration", k, MemberResult.of(t), stats)),
            should_stop=channel.stop)
        channel.send(_Progress("done", k, result))
