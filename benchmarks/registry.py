"""The benchmarks speed.py runs: each a ``Benchmark`` subclass in a module of its own, registered with
``@register``; a new one is its module and its name in ``MODULES``."""

from __future__ import annotations

import argparse
import importlib
from typing import Dict, Iterator, Tuple, Union

import torch

# run, printed and written in this order
MODULES = ("meta_training", "eval_step", "torch_optimizer", "memory")

# an entry of a benchmark's section of speed.json (name, figures), or a line to print without figures
Result = Union[Tuple[str, dict], str]


class Benchmark:
    """One benchmark: its section of speed.json (``name``), which the run fills with what ``run`` yields."""

    name: str
    always_written = True  # the section is in speed.json (maybe empty) even when the benchmark is not selected

    def selected(self, args: argparse.Namespace, device: torch.device) -> bool:
        """Whether --tasks, --modes, --skip-memory and the device ask for it."""
        return True

    def run(self, args: argparse.Namespace, device: torch.device) -> Iterator[Result]:
        """Measures, yielding each entry as it is measured."""
        raise NotImplementedError

    def line(self, name: str, figures: dict) -> str:
        """The line printed for an entry."""
        raise NotImplementedError


BENCHMARKS: Dict[str, Benchmark] = {}


def register(cls: type) -> type:
    BENCHMARKS[cls.name] = cls()
    return cls


def load() -> Dict[str, Benchmark]:
    """Every benchmark, in ``MODULES``'s order (whichever order their modules were imported in)."""
    for module in MODULES:
        importlib.import_module(f"benchmarks.{module}")
    order = [f"benchmarks.{module}" for module in MODULES]
    return dict(sorted(BENCHMARKS.items(), key=lambda item: order.index(type(item[1]).__module__)))
