"""A learned optimizer rebuilt from a checkpoint (a file or ``pretrained:<name>``) through the registry."""

from __future__ import annotations

from pathlib import Path

from l2l_cli.core.checkpoints import CheckpointError, load_checkpoint
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.learned import build_learned
from l2l_cli.pretrained import resolve


def load_learned_optimizer(path: str | Path, device="cpu"):
    """(the learned optimizer a checkpoint holds, rebuilt through the registry from the architecture and config it
    records, with its evaluated weights; the payload). ``path``: a file, or ``pretrained:<name>``."""
    path = resolve(path)
    payload = load_checkpoint(path)
    return rebuild_learned(payload, path).to(device), payload


def rebuild_learned(payload: dict, path: str | Path):
    """The learned optimizer of a loaded checkpoint, through the registry; one line naming ``path`` on failure."""
    saved = payload.get("optimizer")
    name = saved.get("name") if isinstance(saved, dict) else None
    if name not in OPTIMIZERS.learned():
        raise CheckpointError(f"checkpoint {path}: its learned optimizer {name!r} is not one this l2l has "
                              f"(allowed values: {', '.join(OPTIMIZERS.learned())})")
    try:
        net = build_learned(OPTIMIZERS.get(name).config(**saved))
        net.load_state_dict(payload["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path}: its {name} config or weights do not fit this l2l ({reason})"
                              ) from None
    return net
