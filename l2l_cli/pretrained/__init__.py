"""Learned optimizers shipped with the package, addressed as ``pretrained:<name>`` wherever a checkpoint is asked for.

Each is ``<name>.pt`` (the evaluated weights and configs of a best.pt written by `l2l train`, without the training
state) next to ``<name>.json``: the command, config, commit, seeds, its evaluation table, and a check: the mean final
loss of the learned optimizer and of the run's best tuned baseline on a few test functions, which the tests
recompute so a change that alters what a shipped optimizer does is caught. `l2l pretrained add` makes both files
(``api.pretrained.package``); this module is only the catalog, so any layer can resolve a name.
"""

from __future__ import annotations

import json
from pathlib import Path

from l2l_cli.core.checkpoints import CheckpointError

PREFIX = "pretrained:"
HERE = Path(__file__).resolve().parent
CHECK_FUNCTIONS = {"quadratic": 256}  # test functions the check runs on: all a family's default evaluation would
CHECK_FUNCTIONS_DEFAULT = 8  # take seconds to run (the MNIST MLP: 8 functions of 100 steps)
# the fields of best.pt an optimizer is rebuilt and evaluated from (load_learned_optimizer); the rest is training state
KEPT = ("optimizer", "optimizee", "schedule", "model", "iteration", "best_val", "best_iteration", "seed", "member",
        "data_seed", "history")


def names(directory: Path = HERE) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.pt") if p.with_suffix(".json").is_file())


def record(name: str, directory: Path = HERE) -> dict:
    return json.loads((directory / f"{name}.json").read_text())


def resolve(spec: str | Path, directory: Path = HERE) -> Path:
    """A checkpoint path, or ``pretrained:<name>`` -> the shipped file; an unknown name fails with one line."""
    text = str(spec)
    if not text.startswith(PREFIX):
        return Path(text).expanduser()
    name = text[len(PREFIX):]
    if name not in names(directory):
        raise CheckpointError(f"checkpoint {text}: no such pretrained optimizer, allowed values: "
                              f"{', '.join(PREFIX + n for n in names(directory)) or '(none shipped)'}")
    return directory / f"{name}.pt"


__all__ = ["HERE", "KEPT", "PREFIX", "names", "record", "resolve"]
