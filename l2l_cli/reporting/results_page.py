"""The results page `l2l report` rebuilds: which experiments it shows (a catalog file), and the Markdown page made
from their evaluations' results.json files and pictures, so that no figure on it is typed by hand.

A catalog is YAML: ``entries``, each with a ``name`` (a plain identifier: the page's anchor and the folder of its
pictures), a ``title``, the ``checkpoint`` its evaluation starts from (``pretrained:<name>`` or a file) and the
``overrides`` of `l2l eval` that make the experiment (``optimizee=mnist``, ``experiment=convnet_transfer``, ...).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

from l2l_cli import pretrained
from l2l_cli.core.checks import ConfigError
from l2l_cli.core.user_files import read_json, read_yaml, require
from l2l_cli.evaluation.comparison import ratio
from l2l_cli.reporting.run_records import results_problem

PICTURES = ("curves.png", "pictures.png")  # what an evaluation draws, in the order the page shows them
MARKER = ".l2l-report"  # in a page's folder: it is the report's to replace
KEPT = "Not re-run in this build: kept from the page built "  # a section `--only` carried over


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    checkpoint: str
    overrides: tuple
    absent_columns: tuple = ()  # its eval.compare.NAME=pretrained:X overrides left out, X not shipped yet

    def command(self) -> str:
        return " ".join(["l2l eval", f"checkpoint={self.checkpoint}", *self.overrides])

    def compared(self) -> List[tuple]:
        """(NAME, checkpoint) of each comparison column its overrides name (eval.compare.NAME=CHECKPOINT)."""
        pairs = (o.lstrip("+").split("=", 1) for o in self.overrides if _compares(o))
        return [(key[len(COMPARE):], value) for key, value in pairs]

    def shipped_columns(self) -> Entry:
        """This entry without the comparison columns whose pretrained optimizer is not shipped yet (the page says
        which): the rest of the experiment still runs."""
        shipped = pretrained.names()
        absent = tuple(o for o in self.overrides if _compares(o) and _not_shipped(o.split("=", 1)[1], shipped))
        return replace(self, overrides=tuple(o for o in self.overrides if o not in absent), absent_columns=absent)


COMPARE = "eval.compare."


def _compares(override: str) -> bool:
    """``override`` adds a comparison column (eval.compare.NAME=CHECKPOINT, with or without Hydra's +)."""
    return override.lstrip("+").startswith(COMPARE)


def _not_shipped(value: str, shipped: List[str]) -> bool:
    """``value`` names a pretrained optimizer (pretrained:X) that is not among ``shipped``."""
    return value.startswith(pretrained.PREFIX) and value[len(pretrained.PREFIX):] not in shipped


def read_catalog(path: str | Path) -> List[Entry]:
    """The catalog's entries, checked: one line naming the file and what is wrong otherwise."""
    path = Path(path)
    data = read_yaml(path, key="--catalog", error=ConfigError)

    def need(ok: bool, message: str) -> None:
        require(ok, path, message, "--catalog", ConfigError)

    need(isinstance(data, dict) and isinstance(data.get("entries"), list) and data["entries"],
         "expected a mapping with a non-empty list 'entries'")
    entries = []
    for i, item in enumerate(data["entries"]):
        need(isinstance(item, dict) and set(item) <= {"name", "title", "checkpoint", "overrides"},
             f"entries[{i}] must be a mapping of name, title, checkpoint and overrides")
        name, overrides = item.get("name"), item.get("overrides", [])
        need(isinstance(name, str) and pretrained.NAME.fullmatch(name) is not None,
             f"entries[{i}].name must be a plain identifier (a letter, then letters, digits or _), got {name!r}")
        need(all(isinstance(item.get(k), str) and item[k] for k in ("title", "checkpoint")),
             f"entries[{i}] ({name}): title and checkpoint must be non-empty strings")
        need(isinstance(overrides, list) and all(isinstance(o, str) and "=" in o for o in overrides),
             f"entries[{i}] ({name}): overrides must be a list of key=value strings")
        need(not any(o.lstrip("+~").startswith(("hydra.", "checkpoint=")) for o in overrides),
             f"entries[{i}] ({name}): overrides may not set hydra.* or checkpoint (the report sets them)")
        entries.append(Entry(name, item["title"], item["checkpoint"], tuple(overrides)))
    names = [e.name for e in entries]
    need(len(set(names)) == len(names), f"entry names must be unique, got {names}")
    return entries


def checkpoint_missing(entry: Entry) -> Optional[str]:
    """Why an entry cannot run yet (its checkpoint, or a pretrained optimizer its overrides compare with, not
    shipped; its checkpoint file absent), or None."""
    shipped = pretrained.names()
    named = [entry.checkpoint] + [o.split("=", 1)[1] for o in entry.overrides]
    absent = [n for n in named if _not_shipped(n, shipped)]
    if absent:
        return f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not shipped yet"
    if not entry.checkpoint.startswith(pretrained.PREFIX) and not Path(entry.checkpoint).expanduser().is_file():
        return f"{entry.checkpoint}: no such file"
    return None


def provenance(checkpoint: str) -> str:
    """Where a checkpoint came from, in a sentence: a shipped optimizer's command, commit, seeds and stopping."""
    if not checkpoint.startswith(pretrained.PREFIX):
        return f"`{checkpoint}`"
    info = pretrained.record(checkpoint[len(pretrained.PREFIX):])
    trained, seeds = info.get("trained") or {}, info.get("seeds") or {}
    commit = _commit(info)
    resumed = info.get("resumed_at")
    if isinstance(resumed, list) and resumed:
        commit += ", resumed at " + ", ".join(_commit(r) if isinstance(r, dict) else "?" for r in resumed)
    start = info.get("started_from")
    if isinstance(start, dict):  # fine-tuned from another run's optimizer (train.init)
        commit += f", starting from `{start.get('checkpoint')}`" + (
            f" (`{start['command']}` at commit {_commit(start)})" if isinstance(start.get("command"), str) else "")
    seed = ", ".join(f"{k} {v}" for k, v in seeds.items()) if isinstance(seeds, dict) else "?"
    stop = ""
    if isinstance(trained.get("iterations"), int):
        stop = (f"; meta-trained {trained['iterations']} iterations, checkpoint of iteration "
                f"{trained.get('checkpoint_iteration')} (best validation {_num(trained.get('best_val'))})")
    return f"`{checkpoint}`: {info['architecture']}, `{info['command']}` at commit {commit}, {seed}{stop}"


def _commit(info: dict) -> str:
    return str(info.get("commit") or "?")[:10] + (" with changes" if info.get("commit_dirty") else "")


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def tasks_of(eval_dir: Path) -> List[tuple]:
    """(variant or '', its folder) for each task an evaluation wrote: one, or every variant of a study."""
    study = read_json(eval_dir / "results.json")
    variants = study.get("variants")
    if isinstance(variants, dict) and variants:
        return [(v, eval_dir / v) for v in variants]
    return [("", eval_dir)]


def task_table(results: dict) -> List[str]:
    """Markdown rows: every optimizer's tuned lr, mean and median final test loss and mean / best baseline's."""
    best = results["best_baseline"]
    best_mean = results["optimizers"][best]["final_mean"]
    rates = results.get("learning_rates", {})
    lowest = min(s["final_mean"] for s in results["optimizers"].values())
    rows = ["| optimizer | lr | mean | median | mean / best baseline |", "| --- | --- | --- | --- | --- |"]
    for name, stats in results["optimizers"].items():
        lr = rates.get(name, {}).get("lr")
        cell = f"**{_num(stats['final_mean'])}**" if stats["final_mean"] == lowest else _num(stats["final_mean"])
        rows.append(f"| {name} | {'learned' if lr is None else _num(lr)} | {cell} | {_num(stats['final_median'])} "
                    f"| {ratio(stats['final_mean'], best_mean):.3g} |")
    return rows


def summary_rows(entry: Entry, variant: str, results: dict) -> List[str]:
    """The headline table's rows of one task: each learned optimizer (no tuned lr) against the best tuned
    baseline, mean (median)."""
    best = results["best_baseline"]
    rates, figures = results.get("learning_rates", {}), results["optimizers"]
    base = figures[best]
    rows = []
    for name, stats in figures.items():
        if rates.get(name, {}).get("lr") is None:
            task = f"[{entry.name}](#{entry.name}){' ' + variant if variant else ''}"
            rows.append(f"| {task} | {name} | {_num(stats['final_mean'])} ({_num(stats['final_median'])}) | {best}, lr "
                        f"{_num(rates[best]['lr'])}: {_num(base['final_mean'])} ({_num(base['final_median'])}) | "
                        f"{ratio(stats['final_mean'], base['final_mean']):.3g} |")
    return rows


def section(entry: Entry, eval_dir: Path, assets: Path, seconds: float) -> tuple[List[str], List[str]]:
    """The entry's part of the page and its rows of the headline table; its pictures are copied into
    ``assets / entry.name``."""
    lines = [*_heading(entry), f"{_checkpoint_named(entry)}Evaluation: {_duration(seconds)}.", ""]
    columns = _column_lines(entry)
    lines += [*columns, ""] if columns else []
    if entry.absent_columns:
        lines += [f"Left out, not shipped yet: {', '.join(f'`{o}`' for o in entry.absent_columns)}.", ""]
    summary = []
    for variant, folder in tasks_of(eval_dir):
        path = folder / "results.json"
        results = read_json(path)
        problem = results_problem(results)
        require(problem is None, path, problem or "")
        if variant:
            lines += [f"### {variant}", ""]
        lines += [f"{results['num_test_functions']} test functions x {results['num_steps']} steps; mean and median "
                  f"final loss; best tuned baseline: {results['best_baseline']}.", "", *task_table(results), ""]
        summary += summary_rows(entry, variant, results)
        target = assets / entry.name / variant if variant else assets / entry.name
        for picture in PICTURES:
            if (folder / picture).is_file():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / picture, target / picture)
                relative = target.relative_to(assets) / picture
                alt = " ".join(filter(None, (entry.name, variant, picture[:-4])))
                lines += [f"![{alt}]({relative.as_posix()})", ""]
    return lines, summary


def _heading(entry: Entry) -> List[str]:
    """A section's first lines: its title and its command."""
    return [f"## {entry.title} {{#{entry.name}}}", "", f"`{entry.command()}`", ""]


def _checkpoint_named(entry: Entry) -> str:
    """How a section's checkpoint line starts: where the evaluated optimizer came from."""
    return f"Checkpoint {provenance(entry.checkpoint)}. "


def _column_lines(entry: Entry) -> List[str]:
    return [f"- Column `{name}`: {provenance(checkpoint)}." for name, checkpoint in entry.compared()]


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def page(sections: List[tuple], missing: List[tuple], total_seconds: float, header: str, kept: int = 0) -> str:
    """``sections``: (lines, headline rows) per entry, from ``section`` or ``kept_section``; ``kept``: how many of
    them an earlier build made."""
    earlier = f"; the {kept} marked as kept come from an earlier build's" if kept else ""
    lines = ["# Results, rebuilt by `l2l report`", "", header, "",
             f"Every number and picture below comes from the evaluations this command ran ({_duration(total_seconds)} "
             f"in all{earlier}); each section names its command, which reproduces it alone. Final test loss, mean "
             "(median); every baseline's learning rate tuned on validation functions; ratio = learned / best tuned "
             "baseline on the mean.", ""]
    if sections:
        lines += ["| task | learned | mean (median) | best tuned baseline | ratio |", "| --- | --- | --- | --- | --- |",
                  *(row for _, rows in sections for row in rows), ""]
    if missing:
        lines += ["Not on this page yet:", ""] + [f"- {e.title} (`{e.name}`): {why}" for e, why in missing] + [""]
    for part, _ in sections:
        lines += part
    return "\n".join(lines).rstrip() + "\n"


BUILT = re.compile(r"^Built (.+? at commit \S+(?: with changes)?) from ")
HEADING = re.compile(r"^## .* \{#(\w+)\}$")


def earlier_sections(text: str) -> tuple[str, Dict[str, tuple]]:
    """A page ``page`` wrote -> (when and at which commit it was built, name -> (its section's lines, its rows of
    the headline table))."""
    lines = text.splitlines()
    built = next((m.group(1) for m in map(BUILT.match, lines) if m), "?")
    sections: Dict[str, tuple] = {}
    current = None
    for line in lines:
        heading = HEADING.match(line)
        if heading:
            current = heading.group(1)
            sections[current] = ([], [r for r in lines if r.startswith(f"| [{current}](#{current})")])
        if current is not None:
            sections[current][0].append(line)
    for part, _ in sections.values():
        while part and not part[-1]:
            part.pop()
        part.append("")
    return built, sections


def kept_section(entry: Entry, earlier: tuple) -> tuple[Optional[tuple], str]:
    """``entry``'s section of the earlier page (``earlier_sections``) when it shows what this build would run: the
    same command and the same shipped optimizers (each named by its command, commit and stopping); else (None,
    why not)."""
    built, sections = earlier
    if entry.name not in sections:
        return None, "not on the page before"
    if not all(c.startswith(pretrained.PREFIX) for c in [entry.checkpoint, *(c for _, c in entry.compared())]):
        return None, "a checkpoint file, not a shipped optimizer: it may have changed"
    lines, rows = sections[entry.name]
    heading = _heading(entry)
    if not all(line in lines for line in [heading[2], *_column_lines(entry)]) or not any(
            line.startswith(_checkpoint_named(entry)) for line in lines):
        return None, "its command, or what the page says of an optimizer it runs, changed since the page was built"
    if not any(line.startswith(KEPT) for line in lines):
        lines = [*lines[:len(heading)], f"{KEPT}{built}.", "", *lines[len(heading):]]
    return (lines, rows), ""
