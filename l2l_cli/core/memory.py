"""What a run will allocate, checked against what this machine has before it is allocated: a size that cannot fit
fails in one line naming the keys that set it, instead of the allocator's error (or the kernel's OOM killer) later.

The estimates are lower bounds (the arrays a run must hold at once, not every temporary), so a run that fits is
never refused; one that is refused could not have run.
"""

from __future__ import annotations

import os
from pathlib import Path

from l2l_cli.core.checks import ConfigError
from l2l_cli.core.user_files import human

FLOAT_BYTES = 4


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """A container's memory limit (cgroup v2) less what it uses: the machine's free memory overstates it."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def available_bytes() -> int:
    """Memory this process can still take: the smaller of the machine's available memory and the container's."""
    found = [m for m in (_meminfo_available(), _cgroup_available()) if m is not None]
    if not found:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return 1 << 62  # nothing to ask: never refuse
    return min(found)


def check_fits(need: int, what: str, keys: str) -> None:
    """One line naming ``keys`` when ``need`` bytes (a lower bound) exceed the memory available now."""
    available = available_bytes()
    if need > available:
        raise ConfigError(f"{keys}: {what} needs at least {human(need)}, more than the {human(available)} of memory "
                          "available on this machine; make it smaller")
