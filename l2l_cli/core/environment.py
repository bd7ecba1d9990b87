"""Process-level setup and the provenance every run records: threads, device, versions, git commit."""

from __future__ import annotations

import ctypes
import platform
import subprocess
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

from l2l_cli.core.schemas import ConfigError

RECORDED_PACKAGES = ("l2l-cli", "torch", "hydra-core", "omegaconf", "tensorboard", "rich", "numpy")


def configure_torch(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    keep_freed_memory()


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to n for a block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the OS; False where the C
    library is not glibc (nothing changes there).

    torch's CPU tensors come straight from malloc, and by default every block over malloc's mmap threshold (128 KB,
    adapting up to 32 MB) is a fresh mmap whose pages fault in, zeroed, on first write: a step that allocates its
    (4H, N) gate matrix anew can pay for that every time (docs/performance.md, for the figures).
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> None:
    """Hand the memory freed so far back to the OS (glibc's malloc_trim), between phases of a run (a population
    member's meta-training, meta-training before evaluation, a generalisation variant): with keep_freed_memory the
    heap keeps each phase's high-water mark, and the next phase's differently sized blocks pile on top of it
    (docs/performance.md)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but torch sees no CUDA device (allowed values: cpu, cuda, auto)")
    return torch.device(name)


HERE = Path(__file__).resolve().parent
# what l2l itself writes into a checkout (runs kept in the repo, the default output roots, the results page): a
# change there is a run's output, not a change of the code the run ran
OUTPUT_DIRS = ("runs", "outputs", "multirun", "docs/results")


def _git(*args: str, where: Path = HERE) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(where: Path = HERE) -> str | None:
    return _git("rev-parse", "HEAD", where=where) or None


def git_dirty(where: Path = HERE) -> bool | None:
    """Whether tracked files outside l2l's own outputs differ from that commit (the run's code is then not exactly
    the commit's); a run that writes into runs/ of its checkout does not make the next run's code "changed"."""
    excluded = [f":(top,exclude){path}" for path in OUTPUT_DIRS]
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", *excluded, where=where)
    return None if status is None else bool(status)


def environment_record() -> dict:
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "packages": versions, "git_commit": git_commit(),
            "git_dirty": git_dirty(), "torch_threads": torch.get_num_threads()}


def earlier_environments(previous: dict) -> list[dict]:
    """The environments of a recorded run's segments, oldest first (its ``earlier_environments``, then its own):
    what a resume of it appends to; a record that has none of them (written before they were kept) gives none."""
    earlier = previous.get("earlier_environments", [])
    kept = [e for e in earlier if isinstance(e, dict)] if isinstance(earlier, list) else []
    current = previous.get("environment")
    return [*kept, current] if isinstance(current, dict) else kept
