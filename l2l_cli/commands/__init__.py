"""Glue from a composed config to objects: one module per `l2l` command, each with ``run(cfg) -> metric``."""

from __future__ import annotations

import functools
import os
import sys

from l2l_cli.config import ConfigError
from l2l_cli.meta.checkpoint import CheckpointError

USER_ERRORS = (ConfigError, CheckpointError)


def hydra_task(run):
    """Wrap ``run(cfg)`` for hydra.main: a user error becomes one clear line and a non-zero exit.

    HYDRA_FULL_ERROR=1 re-raises it so the full traceback shows.
    """

    @functools.wraps(run)
    def task(cfg):
        try:
            return run(cfg)
        except USER_ERRORS as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"l2l: error: {exc}", file=sys.stderr)
            sys.exit(1)

    return task
