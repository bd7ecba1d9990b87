"""A run's directory belongs to one live run: names that differ for runs started in the same second, and a lock.

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
import time
from pathlib import Path
from typing import Optional

from l2l_cli.core.files import WriteError

LOCK = ".l2l.lock"


class RunDirBusy(RuntimeError):
    """Another live run holds this run directory; the message names it."""


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
