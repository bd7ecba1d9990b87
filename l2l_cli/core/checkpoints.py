"""Checkpoints: plain tensors and Python values only, written atomically, read with weights_only=True."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch

from l2l_cli.core.files import atomic_write

FORMAT = "l2l-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def save_checkpoint(payload: dict, path: str | Path, make_dirs: bool = True) -> Path:
    """Atomic (``files.atomic_write``): readers never see a partial file; a failed write is one line naming it."""
    buffer = io.BytesIO()  # serialised first: a full disk then fails in a plain write, with its errno
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, buffer)
    return atomic_write(path, lambda handle: handle.write(buffer.getbuffer()), make_dirs)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it holds pickled Python objects, which are never loaded (weights_only=True)"
        raise CheckpointError(f"checkpoint {path}: unreadable ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not an l2l checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {payload.get('format_version')}, this l2l reads {FORMAT_VERSION}")
    return payload


def copy_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Another run's checkpoint into this one: read safely (it is validated like any load), written atomically."""
    return save_checkpoint(load_checkpoint(source), target)


def check_architecture(path: str | Path, saved: dict, wanted: dict) -> None:
    """Fail with one line when the config asks for a different network than the checkpoint holds."""
    for key, value in wanted.items():
        if saved.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path}: trained with {key}={saved.get(key)}, config asks for optimizer.{key}={value}")
