"""Cores handed on between processes side by side (l2l_cli/core/spare_cores.py), in this process: the slots one
process gives up become another's, with its threads and its affinity, and return when that one runs out too."""

import os
from multiprocessing import get_context

import pytest
import torch

from l2l_cli.core import spare_cores
from l2l_cli.core.processes import process_cores
from l2l_cli.core.spare_cores import FREE, SpareCores, take_spare_cores


@pytest.fixture
def restored():
    threads, cores, installed = torch.get_num_threads(), os.sched_getaffinity(0), spare_cores._installed
    yield
    torch.set_num_threads(threads)
    os.sched_setaffinity(0, cores)
    spare_cores._installed = installed


def test_nothing_happens_where_no_handoff_is_installed(restored):
    spare_cores._installed = None
    torch.set_num_threads(1)
    take_spare_cores()
    assert torch.get_num_threads() == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to hand one on")
def test_given_up_cores_are_taken_with_threads_and_affinity_and_given_up_again(restored, caplog):
    cores = process_cores(2, 1)
    spare = SpareCores(get_context("spawn"), cores, threads=1)
    spare.install(0, lambda: "variant b")
    os.sched_setaffinity(0, cores[0])
    torch.set_num_threads(1)
    take_spare_cores()  # nothing given up yet
    assert torch.get_num_threads() == 1 and os.sched_getaffinity(0) == set(cores[0])
    spare.give_up(1)
    with caplog.at_level("INFO", logger="l2l.cores"):
        take_spare_cores()
    assert torch.get_num_threads() == 2 and os.sched_getaffinity(0) == set(cores[0] + cores[1])
    assert list(spare.owner) == [0, 0]
    assert "variant b: took over the cores of finished processes, now 2 threads" in caplog.text
    spare.give_up(0)  # what it holds, its own and the one it took
    assert list(spare.owner) == [FREE, FREE]
    assert spare.take(1) == [0, 1]


def test_unpinned_processes_take_threads_only(restored):
    spare = SpareCores(get_context("spawn"), [None, None, None], threads=2)
    spare.install(2)
    affinity = os.sched_getaffinity(0)
    spare.give_up(0)
    take_spare_cores()
    assert torch.get_num_threads() == 4 and os.sched_getaffinity(0) == affinity
    assert list(spare.owner) == [2, 1, 2]
