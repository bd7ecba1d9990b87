"""Hydra writes its record (.hydra/config.yaml, hydra.yaml, overrides.yaml) into the run dir before l2l checks a
resume (another family, seed or architecture is refused only then): a resume that fails before it records anything
of its own (run.json unchanged) puts the run's earlier Hydra record back, so a refused command leaves the run it
named as it was."""

from __future__ import annotations

from pathlib import Path

from l2l_cli.core.files import atomic_write
from l2l_cli.core.user_files import UserFileError, read_bytes

FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
LIMIT = 8 * 2**20  # Hydra's record of a run is a few KB; anything larger is not one to keep


def _snapshot(path: Path) -> bytes | None:
    """The bytes of a regular file of bounded size, else None (absent, a FIFO, a link to a device, too large)."""
    try:
        return read_bytes(path, LIMIT)
    except UserFileError:
        return None


class KeptHydraRecord:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.files = {name: _snapshot(run_dir / ".hydra" / name) for name in FILES}
        self.run_json = _snapshot(run_dir / "run.json")

    def restore(self) -> None:
        """Put the earlier record back, unless this command has recorded the run as its own (run.json changed)."""
        if self.run_json is None or _snapshot(self.run_dir / "run.json") != self.run_json:
            return
        for name, data in self.files.items():
            if data is not None and _snapshot(self.run_dir / ".hydra" / name) != data:
                atomic_write(self.run_dir / ".hydra" / name, lambda handle, data=data: handle.write(data), False)
