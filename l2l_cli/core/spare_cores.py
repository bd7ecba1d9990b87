"""Cores handed on between processes side by side: one that has no work left gives up its cores, and those still
working take them over between chunks of their work (``take_spare_cores``, called where the evaluation starts a
chunk). A study whose last variant outlasts the others then finishes it on every core instead of one.

A process takes cores only where one was installed (``SpareCores.install``, the study's processes); everywhere else
``take_spare_cores`` does nothing. The cores are counted in slots, one per process and its share of the threads;
each slot's owner is kept in one shared array, so a process that took cores and then runs out of work gives them
all up again."""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch

log = logging.getLogger("l2l.cores")

FREE = -1


class SpareCores:
    """Slot i: process i's ``threads`` threads, on ``cores_of[i]`` (None where processes are not pinned)."""

    def __init__(self, ctx, cores_of: list, threads: int):
        self.owner = ctx.Array("i", list(range(len(cores_of))))  # slot -> process holding it, FREE when given up
        self.cores_of, self.threads = cores_of, threads

    def install(self, index: int, label=None) -> None:
        """This process is ``index``; ``label()`` names its current work in the line that says it took cores."""
        global _installed
        _installed = (self, index, label or (lambda: f"process {index}"))

    def give_up(self, index: int) -> None:
        """Every slot ``index`` holds is free for the others to take."""
        with self.owner.get_lock():
            for slot, owner in enumerate(self.owner):
                if owner == index:
                    self.owner[slot] = FREE

    def take(self, index: int) -> list:
        """The free slots now ``index``'s; returns every slot it holds, if it took any (else [])."""
        with self.owner.get_lock():
            if FREE not in self.owner[:]:
                return []
            for slot, owner in enumerate(self.owner):
                if owner == FREE:
                    self.owner[slot] = index
            return [slot for slot, owner in enumerate(self.owner) if owner == index]


_installed: Optional[tuple] = None


def take_spare_cores() -> None:
    """Between chunks: the cores other processes gave up become this one's (threads and affinity), if any."""
    if _installed is None:
        return
    spare, index, label = _installed
    slots = spare.take(index)
    if not slots:
        return
    cores = [core for slot in slots for core in (spare.cores_of[slot] or [])]
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)  # threads OpenMP starts from now on inherit it
    torch.set_num_threads(spare.threads * len(slots))
    log.info("%s: took over the cores of finished processes, now %d threads", label(), torch.get_num_threads())
