"""Name -> (config dataclass, builder) for every role that is a config group: optimizee families, optimizers
(learned and baselines), unroll schedules and meta-gradient estimators.

Each module registers itself when imported; a registry imports every module of its package
the first time it is asked, so adding one is a new module (plus its YAML under conf/) and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List

from l2l_cli.core.checks import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    config: type  # the dataclass of this entry's config node
    build: Callable  # family: build(cfg); learned optimizer: build(cfg) -> nn.Module; baseline: build(cfg, lr)
    learned: bool = False  # optimizers: a learned optimizer (meta-trained) rather than a hand-designed baseline
    defaults: dict = field(default_factory=dict)  # field values that differ from the dataclass's for this entry
    # field values that make a runnable config where a default cannot (a user's own code to point at): the contract
    # tests use them, relative paths from the repository root
    example: dict = field(default_factory=dict)
    # smaller sizes for the contract tests' tiny runs (the same code paths with less arithmetic)
    tiny: dict = field(default_factory=dict)

    def default_config(self):
        """This entry's config with its own defaults: the node its YAML extends."""
        return self.config(name=self.name, **self.defaults)

    def example_config(self):
        """A runnable config: the defaults, with ``example`` where a value has to come from the user."""
        return self.config(name=self.name, **{**self.defaults, **self.example})

    def tiny_config(self):
        """``example_config`` at ``tiny``'s sizes."""
        return self.config(name=self.name, **{**self.defaults, **self.example, **self.tiny})


class Registry:
    def __init__(self, group: str, package: str):
        self.group = group  # the config group: optimizee | optimizer | schedule | estimator
        self.package = package
        self._entries: Dict[str, Entry] = {}
        self._discovered = False

    def register(self, name: str, config: type, build: Callable, *, learned: bool = False,
                 example: dict | None = None, tiny: dict | None = None, **defaults) -> None:
        if name in self._entries and self._entries[name].build is not build:
            raise ValueError(f"{self.group} {name!r} is registered twice ({self._entries[name].build} and {build})")
        self._entries[name] = Entry(name, config, build, learned, defaults, example or {}, tiny or {})

    def unregister(self, name: str) -> None:
        """For tests that register a throw-away entry."""
        self._entries.pop(name, None)

    def _discover(self) -> None:
        if not self._discovered:
            self._discovered = True
            package = importlib.import_module(self.package)
            for module in pkgutil.walk_packages(package.__path__, prefix=f"{self.package}."):
                importlib.import_module(module.name)

    def entries(self) -> Iterator[Entry]:
        self._discover()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> List[str]:
        return [e.name for e in self.entries()]

    def get(self, name: str) -> Entry:
        self._discover()
        if name not in self._entries:
            raise ConfigError(f"{self.group}.name: got {name!r}, allowed values: {', '.join(self.names())}")
        return self._entries[name]

    def learned(self) -> List[str]:
        return [e.name for e in self.entries() if e.learned]

    def baselines(self) -> List[str]:
        """Hand-designed optimizers, in registration order (tables follow eval.baselines, not this)."""
        self._discover()
        return [e.name for e in self._entries.values() if not e.learned]


OPTIMIZEES = Registry("optimizee", "l2l_cli.optimizees")
OPTIMIZERS = Registry("optimizer", "l2l_cli.optimizers")
SCHEDULES = Registry("schedule", "l2l_cli.meta.schedules")
ESTIMATORS = Registry("estimator", "l2l_cli.meta.estimators")
