"""Turn anything a user can get wrong into one line that names the key and what is allowed."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from l2l_cli.cli.config import group_schemas, override_key
from l2l_cli.cli.run_dir_lock import RunDirBusy
from l2l_cli.core.checkpoints import CheckpointError
from l2l_cli.core.processes import SideBySideError
from l2l_cli.core.schemas import ConfigError, EvalConfig, EvalLoopConfig, TrainConfig, TrainLoopConfig
from l2l_cli.core.user_files import UserFileError
from l2l_cli.meta.distributed import DistributedError
from l2l_cli.meta.stopping import DivergenceError, StopRequested
from l2l_cli.optimizees.base import DataError

# errors whose message is the whole story: no traceback for these
USER_ERRORS = (ConfigError, CheckpointError, DivergenceError, DataError, UserFileError, RunDirBusy, DistributedError,
               SideBySideError)


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def chosen_option(group: str) -> str | None:
    """The option of a config group chosen on this command line (`optimizee=mnist`), if one was."""
    return next((arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith(f"{group}=")), None)


def moved_key_given(key: str) -> bool:
    """Whether this command line sets ``key`` (``train.estimator=pes``, ``+train.es.sigma=...``)."""
    return any(override_key(arg) == key for arg in sys.argv[1:])


def allowed_keys(parent: str, root_type: str = "") -> list[str]:
    """Keys that exist under ``parent`` ('' is the top level of ``root_type``) according to the schemas: those of
    the option chosen on the command line, else of every option of the group."""
    groups = group_schemas()
    if parent in groups:
        chosen = chosen_option(parent)
        schemas = [groups[parent][chosen]] if chosen in groups[parent] else groups[parent].values()
        return sorted({name for schema in schemas for name in _fields(schema)})
    if parent == "train":
        return _fields(TrainLoopConfig)
    if parent == "eval":
        return _fields(EvalLoopConfig)
    if parent == "":
        roots = {"TrainConfig": TrainConfig, "EvalConfig": EvalConfig}
        chosen = [roots[root_type]] if root_type in roots else list(roots.values())
        return sorted({name for cls in chosen for name in _fields(cls)})
    return []


# keys that moved to a config group of their own: the old key's error names the new one
MOVED_KEYS = {
    "train.estimator": "estimator=<name> (a config group: tbptt, es, pes)",
    "train.es": "estimator.sigma and estimator.pairs, with estimator=es or estimator=pes",
    "train.es.sigma": "estimator.sigma, with estimator=es or estimator=pes",
    "train.es.pairs": "estimator.pairs, with estimator=es or estimator=pes",
    "train.bptt": "estimator.bptt (estimator=tbptt, the default)",
    "train.second_order": "estimator.second_order (estimator=tbptt, the default)",
}


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def describe(exc: BaseException) -> str | None:
    """One line for a known kind of failure, or None when it is a bug that deserves its traceback."""
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    if isinstance(exc, HydraException | OmegaConfBaseException):
        text = str(exc)
        options = re.search(r"Available options in '([^']+)':\s*\n((?:\s+\S+\n?)+)", text)
        missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
        if options and missing:
            choices = ", ".join(options.group(2).split())
            return f"{missing.group(1)}={missing.group(2)}: no such option, allowed values: {choices}"
        cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else None
        not_in_struct = re.search(r"Key '([^']+)' (?:is )?not in(?: '(\w+)')?", str(cause) if cause else text)
        if not_in_struct:
            full_key = getattr(cause, "full_key", None) or not_in_struct.group(1)
            moved = next((key for key in MOVED_KEYS if moved_key_given(key)), None)
            if moved is not None:
                return f"{moved}: no longer a key; use {MOVED_KEYS[moved]}"
            parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
            allowed = allowed_keys(parent, not_in_struct.group(2) or "")
            chosen = chosen_option(parent) if parent else None
            under = (f" under {parent}" + (f"={chosen}" if chosen else "")) if parent else ""
            hint = f", allowed keys{under}: {', '.join(allowed)}" if allowed else ""
            append = re.search(r"To append to your config use (\S+)", text)
            if not allowed and append:  # a dict of the user's own names (eval.variants, eval.compare)
                hint = f"; a new entry needs a leading +: {append.group(1)}"
            return f"{full_key}: unknown key{hint}"
        line = _first_line(text)
        if cause is not None:
            full_key = getattr(cause, "full_key", None)
            reason = _first_line(str(cause))
            return f"{full_key}: {reason}" if full_key else f"{line}: {reason}"
        return line
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return None


DEBUG_ENV = "L2L_DEBUG"


def exit_on_error(exc: BaseException) -> None:
    """Print the one-line description of ``exc`` and exit non-zero; re-raise in debug mode or for real bugs."""
    if isinstance(exc, KeyboardInterrupt):
        print("l2l: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    if isinstance(exc, StopRequested):
        print(f"l2l: {exc}", file=sys.stderr)
        sys.exit(128 + exc.signum)
    message = describe(exc)
    if message is None or os.environ.get(DEBUG_ENV) == "1":
        raise exc
    print(f"l2l: error: {message}", file=sys.stderr)
    sys.exit(2)
