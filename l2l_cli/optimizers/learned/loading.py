"""A learned optimizer rebuilt from a checkpoint (a file or ``pretrained:<name>``) through the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from l2l_cli.core.checkpoints import CheckpointError, check_weights, load_checkpoint
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.user_files import exception_line
from l2l_cli.optimizers.learned import build_learned
from l2l_cli.pretrained import resolve


def load_learned_optimizer(path: str | Path, device="cpu"):
    """(the learned optimizer a checkpoint holds, rebuilt through the registry from the architecture and config it
    records, with its evaluated weights; the payload). ``path``: a file, or ``pretrained:<name>``."""
    path = resolve(path)
    payload = load_checkpoint(path)
    return rebuild_learned(payload, path).to(device), payload


def rebuild_learned(payload: dict, path: str | Path):
    """The learned optimizer of a loaded checkpoint, through the registry; one line naming ``path`` on failure,
    whatever the recorded config or weights hold."""
    saved = payload.get("optimizer")
    name = saved.get("name") if isinstance(saved, dict) else None
    if not isinstance(name, str) or name not in OPTIMIZERS.learned():
        raise CheckpointError(f"checkpoint {path}: its learned optimizer {name!r} is not one this l2l has "
                              f"(allowed values: {', '.join(OPTIMIZERS.learned())})")
    weights = payload.get("model")
    check_weights(weights, path)  # load_checkpoint checked it already; a payload built in memory may not be
    cfg = _attempt(path, name, lambda: OPTIMIZERS.get(name).config(**saved))
    mismatch = _shape_mismatch(cfg, weights)
    if mismatch is not None:
        raise CheckpointError(f"checkpoint {path}: its {name} config does not fit its weights ({mismatch})")
    net = _attempt(path, name, lambda: build_learned(cfg))
    _attempt(path, name, lambda: net.load_state_dict(weights))
    return net


def _attempt(path: str | Path, name: str, step: Callable[[], Any]) -> Any:
    """``step()``, or one line naming ``path``: a recorded config may make a constructor raise anything."""
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - MemoryError included: a size no machine holds is a bad file
        raise CheckpointError(f"checkpoint {path}: its {name} config or weights do not fit this l2l "
                              f"({exception_line(exc)})") from None


def _shape_mismatch(cfg, weights: dict) -> str | None:
    """Where the network the config describes, built without memory on the meta device, differs from the
    checkpoint's tensors: a recorded size (hidden_size=10**6) cannot make the real build allocate more than the
    file holds. An architecture that cannot be built on the meta device is built for real (its weights then say
    whether it fits)."""
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_learned(cfg).state_dict().items()}
    except Exception:  # noqa: BLE001 - not every architecture builds on meta; the real build then decides
        return None
    theirs = {k: tuple(v.shape) for k, v in weights.items()}
    for key in sorted(shapes.keys() | theirs.keys()):
        if shapes.get(key) != theirs.get(key):
            return f"model[{key!r}]: {'missing' if key not in theirs else list(theirs[key])}, the config builds " \
                   f"{'none' if key not in shapes else list(shapes[key])}"
    return None


def require_fields(payload: dict, path: str | Path, fields=("iteration", "best_val")) -> dict:
    """``payload``, which must hold ``fields`` (what an evaluation records of a checkpoint); else one line."""
    missing = [key for key in fields if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path}: lacks {missing[0]!r}, which l2l train records; evaluate a best.pt "
                              "or last.pt of l2l train")
    return payload


def check_chosen(path: str | Path, payload: dict, chosen: str | None) -> None:
    """The learned optimizer the user chose (``optimizer=<name>``; None: none chosen) is the checkpoint's: a
    checkpoint is rebuilt as what it holds, so another choice would be silently ignored."""
    held = payload["optimizer"]["name"]
    if chosen is not None and chosen != held:
        raise CheckpointError(f"checkpoint {path}: holds a {held} optimizer, config asks for optimizer={chosen} "
                              "(drop optimizer= to use the checkpoint's)")
