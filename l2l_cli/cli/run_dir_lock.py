"""A run's directory belongs to one run: names that differ for runs started in the same second, a lock while it
runs, and a refusal to write into a directory that holds another run's results (only `l2l train resume` continues
one).

The lock is ``<run dir>/.l2l.lock``, created atomically, holding the holder's pid, host, the start time of its
process and its command. A second process asked to write into a directory whose holder is alive fails with one line
naming it; a lock left by a process that is gone (same host, that pid no longer running, or running something
started later) is taken over.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional

from l2l_cli.core.files import WriteError
from l2l_cli.core.user_files import UserFileError, read_json

LOCK = ".l2l.lock"
# what a run leaves that another run must not overwrite (.hydra/ and logs alone: a run that stopped before writing)
RESULTS = ("run.json", "metrics.json", "results.json", "checkpoints", "members", "summary.json")


class RunDirBusy(RuntimeError):
    """Another live run holds this run directory; the message names it."""


class RunDirTaken(RunDirBusy):
    """The directory holds the results of another run; the message says how to continue it or where to go."""


def earlier_run(run_dir: Path) -> Optional[str]:
    """The command (`train`, `eval`, or a description) of the run whose results ``run_dir`` holds; None when it
    holds none."""
    found = [name for name in RESULTS if (Path(run_dir) / name).exists()]
    if not found:
        return None
    try:
        config = read_json(Path(run_dir) / "run.json").get("config")
    except UserFileError:
        return f"run ({', '.join(found)})"
    return "train" if isinstance(config, dict) and "train" in config else "eval"


def claim(run_dir: str | Path, command: str, continuing: bool, key: str = "hydra.run.dir") -> None:
    """Refuse, in one line, to write ``command``'s results into a directory that holds another run's; a train run
    continuing itself (``resume``, or SLURM requeueing it) may."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirTaken(f"{key}={run_dir}: exists and is not a directory")
    earlier = earlier_run(run_dir) if run_dir.is_dir() else None
    if earlier is None or (continuing and command == "train" and earlier == "train"):
        return
    how = (f"continue it with `l2l train resume=true hydra.run.dir={run_dir}`, or " if earlier == "train"
           and command == "train" else "")
    raise RunDirTaken(f"{key}={run_dir} holds the results of an earlier `l2l {earlier}`; a run dir belongs "
                      f"to one run: {how}leave {key} out (a new dir under outputs/) or name an empty one")


def check_writable(directory: str | Path, key: str) -> None:
    """One line before Hydra configures its log file there: the directory (or the nearest part of its path that
    exists, where it will be created) takes a new file. Tried, not asked: root passes every permission check but
    not a read-only mount or an immutable directory."""
    directory = Path(directory).absolute()
    existing = next((p for p in (directory, *directory.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise RunDirTaken(f"{key}={directory}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".l2l-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunDirTaken(f"{key}={directory}: cannot write in {existing} ({exc.strerror or exc}); choose a "
                          "writable directory") from None


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """The temporaries of atomic writes a killed process left (``.<name>.<random>.tmp``); only the lock's new
    holder calls this, so no live writer owns one."""
    # the run layout is at most three levels deep (members/<k>/checkpoints/): a run dir that is a big directory
    # by mistake is not walked whole
    patterns = [".*.tmp", "*/.*.tmp", "*/*/.*.tmp", "*/*/*/.*.tmp"]
    stale = [p for pattern in patterns for p in Path(run_dir).glob(pattern) if p.is_file() and not p.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def unique_suffix() -> str:
    """Four hex digits to follow a run directory's timestamp (resolver `l2l_unique`): runs started in the same
    second get different directories."""
    return secrets.token_hex(2)


def _process_start(pid: int) -> Optional[str]:
    """The start time of a process (Linux: /proc/<pid>/stat field 22), to tell a live holder from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(record: dict) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # cannot look from here: assume it lives
    pid = int(record.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(pid)
    return started is None or record.get("process_start") in (None, started)


class RunDirLock:
    """Held while a run writes into ``run_dir`` (a context manager)."""

    def __init__(self, run_dir: str | Path, command: str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.command = command
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                       "process_start": _process_start(os.getpid()),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held = False

    def acquire(self) -> "RunDirLock":
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(self.run_dir, exc) from None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is not None and _alive(holder):
                    where = "" if holder.get("host") == socket.gethostname() else \
                        f" (another host: remove {self.path} if that run is gone)"
                    raise RunDirBusy(
                        f"run dir {self.run_dir} is in use by another run: `l2l {holder.get('command')}` (pid "
                        f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}){where}; choose "
                        "another hydra.run.dir or wait for it to end") from None
                self.path.unlink(missing_ok=True)  # the holder is gone: take its lock over
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self.record, handle)
            self.held = True
            remove_stale_temporaries(self.run_dir)
            return self
        raise RunDirBusy(f"run dir {self.run_dir}: could not take its lock {self.path}")

    def _read(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            # being written this very moment, or left half-written by a process that died: a second look decides
            time.sleep(0.05)
            try:
                return json.loads(self.path.read_text())
            except (OSError, ValueError):
                return None

    def release(self) -> None:
        if self.held:
            if self._read() == self.record:
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
