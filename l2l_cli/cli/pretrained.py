"""`l2l pretrained`: the learned optimizers shipped with l2l and the figures recorded when they were made.

    l2l pretrained                      # the table
    l2l pretrained add NAME RUN_DIR     # ship the best.pt of a finished `l2l train` run as NAME
    l2l pretrained add NAME RUN_DIR --replace   # replace the optimizer added earlier as NAME (never a shipped one)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from l2l_cli import pretrained
from l2l_cli.api import pretrained as shipping
from l2l_cli.cli.console import fmt, make_table, show
from l2l_cli.core.checks import ConfigError
from l2l_cli.core.user_files import UserFileError
from l2l_cli.evaluation.comparison import ratio


def table():
    """One row per shipped optimizer: its evaluation when it was made, against the best tuned baseline."""
    rows = []
    for name in pretrained.names():
        info = pretrained.record(name)
        evaluation = info["evaluation"]
        optimizers = evaluation["optimizers"]
        learned = optimizers[info["architecture"]]["final_mean"]
        best = evaluation["best_baseline"]
        rows.append([f"{pretrained.PREFIX}{name}", fmt(learned), best, fmt(optimizers[best]["lr"]),
                     fmt(optimizers[best]["final_mean"]), fmt(ratio(learned, optimizers[best]["final_mean"])),
                     f"{_task_of(info)}{evaluation['num_test_functions']}x{evaluation['num_steps']}"])
    numbers = ("learned", "lr", "its\nloss", "ratio", "tests")
    return make_table("shipped learned optimizers: mean final test loss when made",
                      ("checkpoint", "learned", "best\nbaseline", "lr", "its\nloss", "ratio", "tests"), rows,
                      right=numbers, caption="tests: test functions x steps (a mixture's: of its first column; "
                                             "every column in its .json); best: the best tuned baseline")


def _task_of(info: dict) -> str:
    """"<first column> " for an optimizer evaluated on several tasks (a mixture's: its table is the first column's),
    else ""."""
    variants = info.get("variants")
    return f"{next(iter(variants))} " if isinstance(variants, dict) and variants else ""


def provenance(name: str) -> str:
    info = pretrained.record(name)
    commit = (info["commit"] or "?")[:10] + ("+changes" if info.get("commit_dirty") else "")
    return (f"{pretrained.PREFIX}{name}: {info['architecture']} on {info['family']}, `{info['command']}` at commit "
            f"{commit}; {pretrained.HERE / name}.json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="l2l pretrained", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action")
    add = sub.add_parser("add", help="ship the best.pt of a finished `l2l train` run (with its eval/) as NAME")
    add.add_argument("name")
    add.add_argument("run_dir", type=Path)
    add.add_argument("--replace", action="store_true", help="replace the optimizer added earlier as NAME")
    args = parser.parse_args(argv)
    if args.action == "add":
        try:
            info = shipping.package(args.name, args.run_dir, replace=args.replace)
        except (ConfigError, UserFileError, OSError) as exc:
            message = str(exc)
            print(f"l2l: error: {message if message.startswith('pretrained add') else 'pretrained add: ' + message}",
                  file=sys.stderr)
            sys.exit(2)
        check = info["check"]
        print(f"wrote {pretrained.HERE / args.name}.pt and .json; check on {check['num_functions']} test functions: "
              f"learned {fmt(check['learned_final_mean'])} vs {check['baseline']} "
              f"{fmt(check['baseline_final_mean'])}")
        return
    if not pretrained.names():
        print("no pretrained optimizers are shipped with this installation")
        return
    show(table())
    for name in pretrained.names():
        print(provenance(name))
    print("use: l2l eval optimizee=<family> checkpoint=pretrained:<name>, or "
          "LearnedOptimizer(model.parameters(), checkpoint=\"pretrained:<name>\")")
