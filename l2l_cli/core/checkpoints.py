"""Checkpoints: plain tensors and Python values only, written atomically, read with weights_only=True.

Reading is bounded and total (``core.user_files.load_torch``): a regular file of at most ``CHECKPOINT_LIMIT`` bytes, in
the zip format torch.save writes, unpickled by torch's weights-only unpickler; whatever that raises, and any field a
reader uses that has the wrong type, becomes one ``CheckpointError`` line naming the file. Learned-optimizer weights
must be finite: a bit-rotted checkpoint is refused rather than loaded into an optimizer that writes NaN into a model.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from l2l_cli.core.files import atomic_write
from l2l_cli.core.user_files import GiB, UserFileError, load_torch

FORMAT = "l2l-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_LIMIT = 2 * GiB  # the largest learned optimizers are a few MiB; far beyond any l2l writes
WEIGHTS = ("model", "trained_model")  # name -> tensor dicts of learned-optimizer weights (evaluated, trained)
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CONFIGS = ("optimizer", "optimizee", "schedule", "estimator")  # asdict of config dataclasses: plain data
INTEGERS = {"iteration": 0, "best_iteration": -1, "skipped_total": 0, "member": 0, "seed": 0, "data_seed": 0}  # least
PLAIN_DEPTH = 16  # configs nest a few levels; deeper is not something l2l wrote


class CheckpointError(UserFileError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def save_checkpoint(payload: dict, path: str | Path, make_dirs: bool = True) -> Path:
    """Atomic (``files.atomic_write``): readers never see a partial file; a failed write is one line naming it."""
    buffer = io.BytesIO()  # serialised first: a full disk then fails in a plain write, with its errno
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, buffer)
    return atomic_write(path, lambda handle: handle.write(buffer.getbuffer()), make_dirs)


def load_checkpoint(path: str | Path) -> dict:
    """The payload of an l2l checkpoint, its fields type-checked (those present: readers ask for the ones they
    need) and its weights finite; anything else is one ``CheckpointError`` line naming ``path``."""
    path = Path(path)
    try:  # a regular file first (a FIFO would block, /dev/zero never ends), of bounded size; any unpickler error
        payload = load_torch(path, CHECKPOINT_LIMIT)
    except UserFileError as exc:
        raise CheckpointError(f"checkpoint {exc}") from None  # worded as every checkpoint error
    if not isinstance(payload, dict) or not _is(payload.get("format"), str) or payload["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not an l2l checkpoint")
    version = payload.get("format_version")
    if not _is(version, int) or version != FORMAT_VERSION:
        shown = version if _is(version, int) else type(version).__name__
        raise CheckpointError(f"checkpoint {path}: format version {shown}, this l2l reads {FORMAT_VERSION}")
    check_payload(payload, path)
    return payload


def _is(value: Any, kind: type) -> bool:
    """``isinstance``, but a bool is not an int (nor a number)."""
    return isinstance(value, kind) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is(value, (int, float))


def _plain(value: Any, depth: int = 0) -> bool:
    """JSON-like data (what asdict of a config gives): no tensors, nor anything deeper than ``PLAIN_DEPTH``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if depth >= PLAIN_DEPTH:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def check_payload(payload: dict, path: str | Path) -> None:
    """The fields present have the types their readers use; ``model``/``trained_model`` hold finite float tensors."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise CheckpointError(f"checkpoint {path}: {message}")

    for key in CONFIGS:
        if key in payload:
            need(isinstance(payload[key], dict) and _plain(payload[key]),
                 f"its {key!r} is not a config (an object of plain values)")
    for key in ("optimizer", "optimizee"):
        if key in payload and "name" in payload[key]:
            need(isinstance(payload[key]["name"], str), f"its {key}.name is not a string")
    for key in WEIGHTS:
        if key in payload:
            check_weights(payload[key], path, key)
    for key, least in INTEGERS.items():
        if key in payload:
            need(_is(payload[key], int) and payload[key] >= least, f"its {key!r} is not an integer >= {least}")
    if "best_val" in payload:
        need(_is_number(payload["best_val"]), "its 'best_val' is not a number")
    if "history" in payload:
        need(_history(payload["history"]), "its 'history' is not a list of [iteration, validation loss] pairs")
    if "curriculum" in payload:
        need(isinstance(payload["curriculum"], dict) and all(
            isinstance(k, str) and (_is_number(v) or isinstance(v, bool)) for k, v in payload["curriculum"].items()),
            "its 'curriculum' is not an object of numbers")
    if "balance" in payload:
        need(isinstance(payload["balance"], dict) and all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 2 and _is_number(v[0]) and v[0] >= 0
            and _is(v[1], int) and v[1] >= 1 for k, v in payload["balance"].items()),
            "its 'balance' is not an object of [mean squared norm, count] pairs")
    if "rng" in payload:
        rng = payload["rng"]
        need(isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1
             and rng.layout == torch.strided, "its 'rng' is not a generator state (a 1-d uint8 tensor)")
    if "meta_optimizer" in payload:
        state = payload["meta_optimizer"]
        need(isinstance(state, dict) and isinstance(state.get("state"), dict)
             and isinstance(state.get("param_groups"), list), "its 'meta_optimizer' is not an optimizer state_dict")
    if "parameter_groups" in payload:
        groups = payload["parameter_groups"]
        need(isinstance(groups, dict) and all(isinstance(k, str) and isinstance(v, list) and all(
            isinstance(n, str) for n in v) for k, v in groups.items()),
            "its 'parameter_groups' is not an object of lists of tensor names")


def _history(history: Any) -> bool:
    return isinstance(history, list) and all(
        isinstance(h, (list, tuple)) and len(h) == 2 and _is(h[0], int) and _is_number(h[1]) for h in history)


def check_weights(weights: Any, path: str | Path, key: str = "model") -> None:
    """A learned optimizer's weights: tensor name -> finite float tensor on the CPU, else one line naming the
    tensor (bit rot must not load silently: the optimizer would write NaN into the parameters it updates)."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"checkpoint {path}: its {key!r} is not a dict of weight tensors")
    for name, tensor in weights.items():
        if not isinstance(name, str):
            raise CheckpointError(f"checkpoint {path}: its {key!r} has a {type(name).__name__} key, not a tensor name")
        if not (isinstance(tensor, torch.Tensor) and tensor.dtype in WEIGHT_DTYPES and tensor.layout == torch.strided
                and tensor.device.type == "cpu"):
            kind = f"a {tensor.dtype} tensor" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"checkpoint {path}: {key}[{name!r}] is {kind}, not a dense float tensor")
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"checkpoint {path}: {key}[{name!r}] holds {bad} non-finite value(s) (NaN/inf): the "
                                  "file is corrupt; use another checkpoint")


def copy_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Another run's checkpoint into this one: read safely (it is validated like any load), written atomically."""
    return save_checkpoint(load_checkpoint(source), target)


def check_architecture(path: str | Path, saved: dict, wanted: dict) -> None:
    """Fail with one line when the config asks for a different network than the checkpoint holds."""
    for key, value in wanted.items():
        if saved.get(key) != value:
            was = saved.get(key)
            was = repr(was) if isinstance(was, str) and not was.isprintable() else was  # one line, whatever it holds
            raise CheckpointError(
                f"checkpoint {path}: trained with {key}={was}, config asks for optimizer.{key}={value}")

