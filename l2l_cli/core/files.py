"""Every file l2l writes that something reads back (checkpoints, results, metrics, summaries, CSVs) goes through
here: written to a temporary file beside it, fsynced and renamed, so a reader never sees half a file, and a failed
write (disk full, permission lost, directory removed) becomes one ``WriteError`` naming the file, with the run's last
good checkpoint to resume from."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Tuple

from l2l_cli.core.run_layout import run_dir_of

# (path, iteration) of the last checkpoint this process wrote successfully: what a failed write points the user to
_last_good: Optional[Tuple[Path, int]] = None


class WriteError(OSError):
    """A file could not be written; the message names it and the last good checkpoint."""

    def __init__(self, path: Path, cause: OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(cause.errno, f"could not write {path} ({reason}); {last_good_hint()}")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def remember_checkpoint(path: Path, iteration: int) -> None:
    global _last_good
    _last_good = (Path(path), int(iteration))


def last_good_hint() -> str:
    if _last_good is None:
        return "no checkpoint of this run was written before it"
    path, iteration = _last_good
    if not path.is_file():
        return f"the last checkpoint written, {path} (iteration {iteration}), is gone too"
    return f"the last good checkpoint is {path} (iteration {iteration}): continue with resume={run_dir_of(path)}"


def atomic_write(path: str | Path, write: Callable, make_dirs: bool = True) -> Path:
    """Run ``write(handle)`` on a temporary file in ``path``'s directory, fsync it, rename it to ``path``. With
    ``make_dirs`` false the directory must exist: a run whose directory was removed stops instead of quietly
    starting a new one."""
    path = Path(path)
    tmp = None
    try:
        if make_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as any file this user writes (mkstemp makes it private)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise WriteError(path, exc) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str, make_dirs: bool = True) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()), make_dirs)
