"""Optional torch.compile of the LSTM's steps, with a clean fall-back to eager when compilation fails."""

from __future__ import annotations

import logging
import shutil

import torch

log = logging.getLogger("l2l.compile")


def compile_available() -> tuple[bool, str]:
    """torch.compile's CPU backend writes C++; without a compiler it cannot work."""
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        return False, "no C++ compiler on PATH (torch.compile's CPU backend needs one)"
    return True, ""


# tanh as 2 / (1 + e^-2x) - 1: one vectorised exp instead of Sleef's tanh. The LSTM's elementwise work is mostly
# sigmoid and tanh (docs/performance.md, for the gain). Absolute error at most 1.8e-7 in float32 over [-20, 20]
# (torch.tanh: 6e-8).
INDUCTOR_OPTIONS = {"cpp.use_decompose_tanh": True}


class Compiled:
    """``fn`` compiled while that works, ``fn`` itself after any failure (logged once)."""

    def __init__(self, fn):
        self.eager = fn
        self.compiled = torch.compile(fn, dynamic=False, options=INDUCTOR_OPTIONS)
        self.failed = False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any backend failure means: run eagerly
                self.failed = True
                log.warning("torch.compile failed (%s: %s); continuing without it",
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return self.eager(*args, **kwargs)


AUTO_MIN_COORDINATE_STEPS = 2e7  # below this much work a one-off compile does not pay for itself


def should_compile(setting: bool | None, coordinate_steps: float) -> bool:
    """true/false as set; null (auto): compile when the run does enough coordinate-steps to repay it."""
    if setting is not None:
        return setting
    return coordinate_steps >= AUTO_MIN_COORDINATE_STEPS and compile_available()[0]


def maybe_compile(module: torch.nn.Module, enabled: bool) -> bool:
    """Compile ``module.forward`` in place when enabled and possible; returns whether it was compiled."""
    if not enabled:
        return False
    ok, why = compile_available()
    if not ok:
        log.warning("compile=true but %s; running eagerly", why)
        return False
    module.forward = Compiled(module.forward)
    log.info("torch.compile: the %s's steps are compiled (the first steps of each new shape wait for the compiler)",
             getattr(module, "name", type(module).__name__))
    return True
