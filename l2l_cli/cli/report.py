"""`l2l report`: re-run every experiment's evaluation from its shipped checkpoint and rebuild the results page.

    l2l report                                  # every entry of the catalog, page in results/
    l2l report --out docs/results               # the page the docs link to (`make results`)
    l2l report --only quadratic,mnist           # some entries; the others keep their sections of the page in --out
                                                # where their command and shipped optimizers are unchanged
    l2l report --catalog my_report.yaml         # other entries (format: conf/report.yaml)

Each entry's `l2l eval` runs as its own process (its log and outputs in --runs); the page (index.md, with the
tables read from each results.json and the pictures copied next to it) replaces the previous one only when every
evaluation succeeded. An entry whose checkpoint is not shipped yet is listed as such, not run; a comparison column
whose pretrained optimizer is not shipped yet is left out (its section says so).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

from l2l_cli.cli.config import config_dir
from l2l_cli.core.checks import ConfigError
from l2l_cli.core.environment import git_commit, git_dirty
from l2l_cli.core.files import write_text
from l2l_cli.core.user_files import MiB, UserFileError, read_bytes
from l2l_cli.reporting import results_page

PAGE_LIMIT = 16 * MiB  # an index.md the report wrote is a few hundred kB


def run_entry(entry: results_page.Entry, run_dir: Path) -> tuple[float, int, Path]:
    """(seconds, exit code, log) of the entry's `l2l eval` into ``run_dir``; stopped by a signal, it is killed."""
    log = run_dir.with_name(f"{run_dir.name}.log")
    command = [sys.executable, "-m", "l2l_cli", "eval", f"checkpoint={entry.checkpoint}", *entry.overrides,
               f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    proc = None
    with open(log, "w") as handle:
        try:
            with _STOP.deferred():
                proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, "COLUMNS": "120"})
            code = proc.wait()
        except BaseException:
            if proc is not None:
                proc.kill()
                proc.wait()
            raise
    return time.perf_counter() - start, code, log


def check_out(out: Path) -> None:
    """The page's folder is the report's: absent, empty, or holding an earlier page (its marker); anything else
    is a user's folder that replacing would lose."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / results_page.MARKER).is_file())):
        raise ConfigError(f"--out {out}: exists and is not a page l2l report wrote (no {results_page.MARKER}); "
                          "give a new or empty folder")


def replace_page(out: Path, built: Path) -> None:
    """Put the built page where the old one was: the old one is moved aside first and removed only after."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    built.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _earlier_page(out: Path):
    """The sections of the page in ``out`` (``results_page.earlier_sections``), or None where there is none."""
    index = out / "index.md"
    if not index.is_file():
        return None
    return results_page.earlier_sections(read_bytes(index, PAGE_LIMIT, "--out").decode("utf-8", "replace"))


def keep_earlier(entry: results_page.Entry, earlier, out: Path, built: Path) -> tuple:
    """--only, an entry not re-run: (its section of the earlier page, with its pictures copied into ``built``, "")
    where that still holds; else (None, why it is not on this page)."""
    section, why = results_page.kept_section(entry, earlier) if earlier else (None, "")
    if section is None:
        return None, results_page.checkpoint_missing(entry) or (
            "not re-run in this build (--only)" + (f"; {why}" if why else ""))
    if (out / entry.name).is_dir():
        shutil.copytree(out / entry.name, built / entry.name)
    return section, ""


class _Stop:
    """SIGTERM unwinds like Ctrl-C. One that arrives while an evaluation's process is being started waits until
    Popen has returned it: raised inside Popen, it would leave that process running with no one to kill it."""

    def __init__(self):
        self.deferring, self.pending = False, 0

    def __call__(self, signum, frame) -> None:
        if self.deferring:
            self.pending = signum
            return
        print(f"l2l: report stopped by signal {signum}; the page is unchanged", file=sys.stderr)
        raise SystemExit(128 + signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            self(self.pending, None)


_STOP = _Stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="l2l report", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"), help="the page's folder (default: results)")
    parser.add_argument("--catalog", type=Path, default=Path(config_dir()) / "report.yaml",
                        help="the entries (default: the shipped conf/report.yaml)")
    parser.add_argument("--only", default=None, help="comma-separated entry names")
    parser.add_argument("--runs", type=Path, default=None,
                        help="where the evaluations write (default: outputs/report/<date_time>)")
    args = parser.parse_args(argv)
    # a SIGTERM unwinds like Ctrl-C: the running evaluation is killed, the half-built page removed, the old page kept
    signal.signal(signal.SIGTERM, _STOP)
    try:
        entries = results_page.read_catalog(args.catalog)
        wanted = [e.name for e in entries]
        if args.only is not None:
            wanted = [n.strip() for n in args.only.split(",") if n.strip()]
            unknown = sorted(set(wanted) - {e.name for e in entries})
            if unknown or not wanted:
                raise ConfigError(f"--only: {', '.join(unknown) or 'nothing'} not in {args.catalog} (its entries: "
                                  f"{', '.join(e.name for e in entries)})")
        out = args.out.expanduser().absolute()
        check_out(out)
        earlier = _earlier_page(out) if args.only is not None else None
        runs = (args.runs or Path("outputs") / "report" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")).absolute()
        if runs.exists() and any(runs.iterdir()):
            raise ConfigError(f"--runs {runs}: exists and is not empty; give a new folder")
        runs.mkdir(parents=True, exist_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        built = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
        try:
            sections, missing, total, kept = [], [], 0.0, 0
            for entry in (e.shipped_columns() for e in entries):
                if entry.name not in wanted:
                    section, why = keep_earlier(entry, earlier, out, built)
                    if section is None:
                        missing.append((entry, why))
                    else:
                        print(f"{entry.name}: kept from the page built {earlier[0]}")
                        sections.append(section)
                        kept += 1
                    continue
                why = results_page.checkpoint_missing(entry)
                if why:
                    print(f"{entry.name}: skipped, {why}")
                    missing.append((entry, why))
                    continue
                print(f"{entry.name}: {entry.command()}", flush=True)
                seconds, code, log = run_entry(entry, runs / entry.name)
                total += seconds
                if code != 0:
                    raise ConfigError(f"report: the evaluation of {entry.name} failed (exit code {code}); its log: "
                                      f"{log}; the page in {out} is unchanged")
                print(f"{entry.name}: done in {seconds:.0f} s", flush=True)
                sections.append(results_page.section(entry, runs / entry.name, built, seconds))
            shown = runs.relative_to(Path.cwd().absolute()) if runs.is_relative_to(Path.cwd().absolute()) else runs
            commit = (git_commit() or "?")[:10] + (" with changes" if git_dirty() else "")
            header = (f"Built {datetime.now().strftime('%Y-%m-%d %H:%M')} at commit {commit} from "
                      f"`{args.catalog.name}`; the evaluations' full outputs were in `{shown}`.")
            write_text(built / "index.md", results_page.page(sections, missing, total, header, kept))
            write_text(built / results_page.MARKER, "written by l2l report; the next report replaces this folder\n")
            replace_page(out, built)
        finally:
            shutil.rmtree(built, ignore_errors=True)
    except (ConfigError, UserFileError, OSError) as exc:
        print(f"l2l: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out / 'index.md'} ({len(sections)} experiments, {len(missing)} left out) in {total:.0f} s of "
          "evaluations")
