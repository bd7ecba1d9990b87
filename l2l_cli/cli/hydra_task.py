"""Glue from a composed config to objects: one module per `l2l` command, each with ``run(cfg) -> metric``."""

from __future__ import annotations

import functools
import json
import logging
import math
import traceback

from l2l_cli.cli.errors import describe, exit_on_error
from l2l_cli.meta.stopping import StopRequested

log = logging.getLogger("l2l")


def hydra_task(run):
    """Wrap ``run(cfg)`` for hydra.main.

    A single run lets errors reach the `l2l` dispatcher, which prints one line. In a multirun a failing job must
    not stop the sweep: its error is logged and written to <job dir>/error.json, and the job returns NaN so
    sweepers record it as failed.
    """

    @functools.wraps(run)
    def task(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            try:
                return run(cfg)
            except (Exception, KeyboardInterrupt) as exc:
                exit_on_error(exc)  # one line and SystemExit, which Hydra lets through untouched
        try:
            return run(cfg)
        except StopRequested as exc:
            # an interruption (Ctrl-C, SIGTERM, SLURM requeueing the job), not a failed job: no error.json, no result
            # (submitit then waits for the requeued job), and a sweep on this machine stops
            import sys

            print(f"l2l: {exc}", file=sys.stderr)
            raise SystemExit(128 + exc.signum) from None
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            from pathlib import Path

            message = describe(exc) or f"{type(exc).__name__}: {exc}"
            out_dir = Path(HydraConfig.get().runtime.output_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "error.json").write_text(json.dumps({
                "error": message, "type": type(exc).__name__, "overrides": list(HydraConfig.get().overrides.task),
                "traceback": traceback.format_exc()}, indent=2))
            log.error("job %s failed: %s", HydraConfig.get().job.num, message)
            return math.nan

    return task
