"""Learned optimizers shipped with the package, addressed as ``pretrained:<name>`` wherever a checkpoint is asked for.

Each is ``<name>.pt`` (the evaluated weights and configs of a best.pt written by `l2l train`, without the training
state) next to ``<name>.json``: the command, config, commit, seeds, its evaluation table, and a check: the mean final
loss of the learned optimizer and of the run's best tuned baseline on a few test functions, which the tests
recompute so a change that alters what a shipped optimizer does is caught. `l2l pretrained add` makes both files
(``api.pretrained.package``); this module is only the catalog, so any layer can resolve a name.
"""

from __future__ import annotations

import re
from pathlib import Path

from l2l_cli.core.checkpoints import CheckpointError
from l2l_cli.core.user_files import is_number, lookup, read_json, require

PREFIX = "pretrained:"
# a plain identifier: a shipped optimizer's name, a study's variant, a report entry (each a file or folder name)
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# the optimizers this package ships: `l2l pretrained add` never replaces one (a maintainer re-ships by hand)
SHIPPED = ("convnet_lstm", "convnet_lstm_sep", "convnet_lstm_sub", "general", "mnist", "neural_art", "quadratic")
HERE = Path(__file__).resolve().parent
# test functions the check runs on: all a family's default evaluation would take seconds to run (the MNIST MLP: 8
# functions of 100 steps; the conv net on Fashion-MNIST: 2)
CHECK_FUNCTIONS = {"quadratic": 256, "convnet": 2}
CHECK_FUNCTIONS_DEFAULT = 8
# the fields of best.pt an optimizer is rebuilt and evaluated from (load_learned_optimizer); the rest is training state
KEPT = ("optimizer", "optimizee", "schedule", "model", "iteration", "best_val", "best_iteration", "seed", "member",
        "data_seed", "history")


# the check figures of a record (api.pretrained.check_figures), recomputed by the tests
INTEGER_CHECKS = ("num_functions", "num_steps", "data_seed")
NUMBER_CHECKS = ("learned_final_mean", "baseline_lr", "baseline_final_mean")


def names(directory: Path = HERE) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.pt") if p.with_suffix(".json").is_file())


def record(name: str, directory: Path = HERE) -> dict:
    """``<name>.json``, checked to hold what `l2l pretrained` and the tests read; else one line naming it."""
    path, key = directory / f"{name}.json", f"{PREFIX}{name}"
    info = read_json(path, key, error=CheckpointError)

    def need(ok: bool, message: str) -> None:
        require(ok, path, message, key, CheckpointError)

    need(all(isinstance(info.get(k), str) for k in ("family", "architecture", "command")),
         "its family, architecture and command are not strings")
    need(info.get("commit") is None or isinstance(info["commit"], str), "its commit is not a string or null")
    evaluation, check = info.get("evaluation"), info.get("check")
    optimizers = lookup(evaluation, "optimizers", dict, {})
    need(all(isinstance(v, dict) and is_number(v.get("final_mean")) and (v.get("lr") is None or is_number(v["lr"]))
             for v in optimizers.values()), "its evaluation.optimizers do not each hold a final_mean and lr")
    need(info["architecture"] in optimizers and lookup(evaluation, "best_baseline", str) in optimizers,
         "its evaluation.optimizers lack its architecture or best_baseline")
    need(all(lookup(evaluation, k, int) is not None for k in ("num_test_functions", "num_steps")),
         "its evaluation.num_test_functions and num_steps are not integers")
    need(isinstance(check, dict) and all(lookup(check, k, int) is not None for k in INTEGER_CHECKS)
         and all(is_number(check.get(k)) for k in NUMBER_CHECKS) and isinstance(check.get("baseline"), str),
         f"its check does not hold {', '.join(INTEGER_CHECKS + NUMBER_CHECKS)} and baseline")
    return info


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


__all__ = ["HERE", "KEPT", "PREFIX", "SHIPPED", "names", "record", "resolve"]
