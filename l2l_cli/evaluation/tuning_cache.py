"""Baseline tunings kept on disk (``eval.tuning_cache``), so that evaluations of several optimizers on the same task
tune each baseline once. A tuning is found only under a key of everything it depends on; plain JSON, written
atomically, so parallel jobs at worst tune the same baseline twice."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from l2l_cli.evaluation.comparison import TuningResult

log = logging.getLogger("l2l.eval")


class TuningCache:
    def __init__(self, directory: str | Path, task: dict, baselines: dict):
        """``task``: what the validation problems and the tuning depend on; ``baselines``: name -> config."""
        self.directory = Path(directory)
        self.keys = {}
        for name, cfg in baselines.items():
            record = {**task, "baseline": asdict(cfg), "torch": torch.__version__}
            self.keys[name] = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}-{self.keys[name][:24]}.json"

    def get(self, name: str) -> TuningResult | None:
        try:
            data = json.loads(self._path(name).read_text())
        except (OSError, ValueError):
            return None
        if data.get("key") != self.keys[name]:
            return None
        log.info("%s: learning rate %s from the tuning cache %s", name, data["lr"], self._path(name))
        scores = {float(k): (math.inf if v is None else float(v)) for k, v in data["scores"].items()}
        return TuningResult(name, float(data["lr"]), scores, grid=[float(g) for g in data["grid"]])

    def put(self, name: str, result: TuningResult) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"key": self.keys[name], "lr": result.lr, "grid": result.grid,
                   "scores": {str(k): (v if math.isfinite(v) else None) for k, v in result.scores.items()}}
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}-", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle)
        os.replace(tmp, self._path(name))
