"""The timing harness every benchmark shares: synchronised timing, the matmul FLOP/s reference, blocks of
measurements each next to its own matmul, their summary, peak resident memory, and snippets run in a fresh process.

Each figure is timed in blocks, each right after its own matmul measurement, and reported as the fastest block
against the fastest matmul of the run (each the least disturbed by other load on a shared machine), next to the
median of each block's fraction of its own matmul.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def per_call(fn, repeats: int, device) -> float:
    """Seconds per call of fn(), over `repeats` calls (the device synchronised before and after)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def timed_once(fn, device) -> float:
    """Seconds of one call of fn() (the first call of a compiled function: its compilation included)."""
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def matmul_flops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Dense fp32 matmul FLOP/s (n x n): the arithmetic limit the other figures are compared with."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def blocks_of(measure, blocks: int, device, reference=None) -> list:
    """`blocks` measurements, each next to its own matmul FLOP/s: on a shared machine the speed of both drifts
    (this one has run 2x slower for minutes at a time), so each ratio compares figures taken seconds apart.
    ``reference``: how to measure that matmul (default: in this process as it is)."""
    out = []
    for _ in range(blocks):
        peak = reference() if reference else matmul_flops(device, repeats=5)
        out.append((measure(), peak))
    return out


def summarise(blocks: list, flops: float) -> tuple[int, dict]:
    """(index, figures) of the fastest block, its fraction of the fastest matmul of the run (each the least disturbed
    by other load; pairing the fastest block with its own matmul would flatter it whenever that matmul was slowed),
    and the median of each block's fraction of its own matmul. blocks: (seconds for `flops` of model work, matmul
    FLOP/s)."""
    best = min(range(len(blocks)), key=lambda k: blocks[k][0])
    peak = max(pk for _, pk in blocks)
    return best, {"seconds": blocks[best][0], "fraction_of_matmul": flops / blocks[best][0] / peak,
                  "fraction_of_matmul_median": statistics.median(flops / sec / pk for sec, pk in blocks),
                  "matmul_flops_per_second": peak,
                  "blocks": [{"seconds": sec, "matmul_flops_per_second": pk} for sec, pk in blocks]}


def peak_rss_mib(pid: int | str = "self") -> float:
    """A process's peak resident set (VmHWM; ru_maxrss would survive exec and report a parent's peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def child_figure(code: str, threads: int | None, *argv: str) -> float:
    """The number a fresh process prints last when it runs ``code``, configured as `l2l` configures torch (threads,
    malloc). In ``code``: torch and sys are imported, the repository root is on sys.path (``from benchmarks.<module>
    import ...`` works) and sys.argv[2:] are ``argv``."""
    prelude = ("import sys, torch; sys.path.insert(0, sys.argv[1]);"
               f"from l2l_cli.core.environment import configure_torch; configure_torch({threads});\n")
    out = subprocess.run([sys.executable, "-c", prelude + code, str(ROOT), *argv], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child process failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return float(out.stdout.strip().splitlines()[-1])
