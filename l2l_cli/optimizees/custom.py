"""Bring your own optimizee: ``optimizee=custom optimizee.target=my_module:make_family``.

The target is ``module:callable`` (importable from the working directory or the Python path) or
``path/to/file.py:callable``; called with ``optimizee.args`` as keyword arguments, it returns an object with:

    num_params: int                                   coordinates of one function
    sample(n, num_steps, gen, device, split)          n functions (anything: tensors, a dict, a dataclass), drawn
                                                      with the torch.Generator ``gen``; split: train | validation |
                                                      test, for families with data pools to keep apart
    initial_params(problem) -> (n, num_params)        theta_0 of each function
    loss(problem, theta, step) -> (n,)                each function's loss at theta (n, num_params) at a step,
                                                      differentiable in theta

and optionally ``select(problem, start, stop)`` (default: rows start..stop-1 of every tensor whose first dimension
is n, in a dict, tuple, list or dataclass), ``repeat(problem, times)`` (the batch times over, for
estimator=es | pes; default: those same tensors repeated along their first dimension),
``expected_loss(problem, theta)`` (default: the loss at step 0; define it when the loss is noisy, e.g. minibatches),
``analytic_loss_and_grad(problem, theta, step)`` (default: autograd), ``data_record()`` (default: None),
``stationary`` (default: False). Train, evaluation with tuned baselines, sweeps and worker processes then treat it
as a built-in family.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.core.schemas import ConfigError, OptimizeeConfig, check
from l2l_cli.core.user_files import MiB, regular_file
from l2l_cli.optimizees.base import map_tensors

TARGET_LIMIT = 16 * MiB  # bytes of a target's .py file


@dataclass
class CustomConfig(OptimizeeConfig):
    """A family from your own code (module docstring: what the target returns)."""

    name: str = "custom"
    target: Optional[str] = None  # module:callable or path/to/file.py:callable
    args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments for the callable: +optimizee.args.k=v
    batch_size: int = 16

    def check_fields(self) -> None:
        check(isinstance(self.target, str) and ":" in self.target, "optimizee.target",
              f"required with optimizee=custom: 'module:callable' or 'path/to/file.py:callable', got {self.target}")


def _reason(exc: BaseException) -> str:
    """What went wrong in the user's code, on one line."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def load_target(target: str):
    """The callable that ``module:callable`` or ``file.py:callable`` names; one line naming the target if not."""
    where, _, attr = target.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            if not path.exists():
                raise FileNotFoundError(f"no such file {path}")
            # a directory, device or FIFO is refused before Python's loader reads it, and so is a huge file
            regular_file(path, TARGET_LIMIT, f"optimizee.target={target}", ConfigError)
            spec = importlib.util.spec_from_file_location(f"l2l_custom_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # so worker processes and pickles can find its classes
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # the `l2l` script, unlike `python -m`, does not add it
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to import is the user's target's
        raise ConfigError(f"optimizee.target={target}: cannot import {where!r} ({_reason(exc)})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"optimizee.target={target}: {where!r} has no callable {attr!r}")
    return fn


def map_rows(problem: Any, n: int, fn) -> Any:
    """fn applied to every tensor whose first dimension is n (one row per function), the rest as is."""
    return map_tensors(problem, lambda t: fn(t) if t.dim() > 0 and t.shape[0] == n else t)


def select_rows(problem: Any, start: int, stop: int, n: int) -> Any:
    """Functions start..stop-1 of a batch."""
    return map_rows(problem, n, lambda t: t[start:stop])


def repeat_rows(problem: Any, times: int, n: int) -> Any:
    """The batch ``times`` times over."""
    return map_rows(problem, n, lambda t: t.repeat(times, *([1] * (t.dim() - 1))))


@dataclass
class Batch:
    """A batch of the user's problems (whatever ``sample`` returned) and how many functions it holds."""

    data: Any
    n: int

    def __len__(self) -> int:
        return self.n


class CustomFamily:
    """The family a user's callable returns, checked once on a tiny sample, with defaults for the optional parts."""

    def __init__(self, cfg: CustomConfig):
        self.cfg = cfg
        target = cfg.target
        try:
            inner = load_target(target)(**cfg.args)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's callable failed
            raise ConfigError(f"optimizee.target={target}: calling it failed ({_reason(exc)})") from None
        for attr in ("sample", "initial_params", "loss"):
            if not callable(getattr(inner, attr, None)):
                raise ConfigError(f"optimizee.target={target}: it returned a {type(inner).__name__} without a "
                                  f"{attr}() method (needs num_params, sample, initial_params, loss)")
        num_params = getattr(inner, "num_params", None)
        if not isinstance(num_params, int) or isinstance(num_params, bool) or num_params < 1:
            raise ConfigError(f"optimizee.target={target}: num_params must be an int >= 1, got {num_params!r}")
        self.inner, self.num_params = inner, num_params
        self.stationary = bool(getattr(inner, "stationary", False))
        self._check_shapes()

    def __reduce__(self):
        return CustomFamily, (self.cfg,)  # worker processes import the target themselves

    def _check_shapes(self) -> None:
        target, n = self.cfg.target, 2
        problem = self.sample(n, 2, torch.Generator().manual_seed(0), "cpu")
        theta = self.initial_params(problem)
        if not isinstance(theta, torch.Tensor) or tuple(theta.shape) != (n, self.num_params) \
                or not theta.is_floating_point():
            got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ConfigError(f"optimizee.target={target}: initial_params must return a float tensor of shape "
                              f"(n, num_params) = ({n}, {self.num_params}), got {got}")
        theta = theta.detach().clone().requires_grad_()
        with torch.enable_grad():
            losses = self.loss(problem, theta, 0)
        if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (n,):
            got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ConfigError(f"optimizee.target={target}: loss must return one value per function, shape "
                              f"({n},), got {got}")
        self._check_gradient(theta, losses)

    def _check_gradient(self, theta: torch.Tensor, losses: torch.Tensor) -> None:
        """The loss is differentiable in theta on the tiny sample, with a finite gradient of theta's shape: found
        here, not as autograd's RuntimeError in the first meta-iteration."""
        where = f"optimizee.target={self.cfg.target}: loss must be differentiable in theta (torch operations on " \
                "theta, no .item(), .detach() or numpy)"
        if not losses.requires_grad:
            raise ConfigError(f"{where}; it returned a tensor without a gradient")
        (grad,) = torch.autograd.grad(losses.sum(), theta, allow_unused=True)
        if grad is None:
            raise ConfigError(f"{where}; it does not depend on theta")
        if tuple(grad.shape) != tuple(theta.shape) or not bool(torch.isfinite(grad).all()):
            raise ConfigError(f"optimizee.target={self.cfg.target}: the loss's gradient at initial_params must be "
                              f"finite, of shape {tuple(theta.shape)}, got shape {tuple(grad.shape)} with "
                              f"{int((~torch.isfinite(grad)).sum())} non-finite values")

    def sample(self, n: int, num_steps: int, gen: torch.Generator, device="cpu", split: str = "train") -> Batch:
        return Batch(self.inner.sample(n, num_steps, gen, device, split), n)

    def initial_params(self, problem: Batch) -> torch.Tensor:
        return self.inner.initial_params(problem.data)

    def loss(self, problem: Batch, theta: torch.Tensor, step: int) -> torch.Tensor:
        return self.inner.loss(problem.data, theta, step)

    def select(self, problem: Batch, start: int, stop: int) -> Batch:
        if hasattr(self.inner, "select"):
            return Batch(self.inner.select(problem.data, start, stop), stop - start)
        return Batch(select_rows(problem.data, start, stop, problem.n), stop - start)

    def repeat(self, problem: Batch, times: int) -> Batch:
        if hasattr(self.inner, "repeat"):
            return Batch(self.inner.repeat(problem.data, times), problem.n * times)
        return Batch(repeat_rows(problem.data, times, problem.n), problem.n * times)

    def analytic_loss_and_grad(self, problem: Batch, theta, step):
        if hasattr(self.inner, "analytic_loss_and_grad"):
            return self.inner.analytic_loss_and_grad(problem.data, theta, step)
        return None

    def expected_loss(self, problem: Batch, theta: torch.Tensor) -> torch.Tensor:
        if hasattr(self.inner, "expected_loss"):
            return self.inner.expected_loss(problem.data, theta)
        return self.loss(problem, theta, 0)

    def data_record(self):
        return self.inner.data_record() if hasattr(self.inner, "data_record") else None


# the contract tests run it on the documented worked example (examples/) (paths from the repository root)
OPTIMIZEES.register("custom", CustomConfig, CustomFamily, example={"target": "examples/logistic_family.py:make_family"})
