"""The `l2l` command: `l2l <command> [hydra overrides]` runs the Hydra app of that command.

Hydra has no subcommands, so this thin dispatcher pops the command from argv and hands the rest to
``hydra.main`` with the command's primary config; `-m`, `--cfg job`, `--help` and `hydra.run.dir=` keep working.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from l2l_cli.cli.hydra_record import KeptHydraRecord
from l2l_cli.cli.run_dir_lock import RunDirLock, check_writable, claim, earlier_run

COMMANDS = {
    "train": ("l2l_cli.cli.train", "meta-train a learned optimizer (then evaluate it)"),
    "eval": ("l2l_cli.cli.evaluate", "compare a learned optimizer with tuned baselines (`l2l eval --help` lists them)"),
    "plot": ("l2l_cli.cli.plot", "one view (TensorBoard, PNG, CSV, table) of sweeps and eval dirs"),
    "pretrained": ("l2l_cli.cli.pretrained", "learned optimizers shipped with l2l (checkpoint=pretrained:NAME)"),
    "report": ("l2l_cli.cli.report", "re-run every experiment's evaluation from its shipped checkpoint; rebuild the "
                                     "results page"),
}
PLAIN_COMMANDS = {"plot", "pretrained", "report"}  # argparse commands, not Hydra apps

USAGE = ("usage: l2l {train,eval} [key=value ...] [-m] [--cfg job] [--help] [--debug]\n"
         "       l2l plot DIR... [--out DIR]\n"
         "       l2l pretrained [add NAME RUN_DIR]\n"
         "       l2l report [--out DIR] [--only NAME,...] [--catalog FILE]")


def rank_overrides(args: list[str]) -> list[str]:
    """torchrun starts every rank with the same command line. Rank 0's run dir is the run's (the others learn it
    from rank 0); the others keep Hydra's files and log in a scratch dir of their own."""
    rank = os.environ.get("RANK", "0")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or rank == "0":
        return args
    import tempfile

    scratch = tempfile.mkdtemp(prefix=f"l2l-rank{rank}-")
    return [a for a in args if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={scratch}",
                                                                      "hydra.output_subdir=null"]


def _value(args: list[str], key: str) -> str | None:
    return next((arg.split("=", 1)[1] for arg in args if arg.lstrip("+").split("=", 1)[0] == key), None)


def continues(run_dir: Path, args: list[str]) -> bool:
    """This train command continues the run in ``run_dir``: resume=true (with that dir), resume=<it or a file in
    it>, or SLURM starting a requeued job again."""
    resume = _value(args, "resume")
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        return True
    if resume is None or resume.lower() in ("false", "null", "none", ""):
        return False
    if resume.lower() == "true":
        return True
    target = Path(resume).expanduser().absolute()
    return target == run_dir.absolute() or run_dir.absolute() in target.parents


def check_run_dir(command: str, args: list[str]) -> None:
    """Before Hydra writes its files (.hydra/, the log): the run dir (or the sweep dir of -m) can be written, holds
    no other run's results unless this is that run's continuation, and no live run holds it."""
    if "-m" in args or "--multirun" in args:
        sweep = _value(args, "hydra.sweep.dir")
        if sweep is not None:
            check_writable(sweep, "hydra.sweep.dir")
            taken = [p for p in Path(sweep).glob("*") if p.is_dir() and earlier_run(p)]
            if taken or Path(sweep, "summary.json").exists():
                claim(taken[0] if taken else sweep, command, continuing=False, key="hydra.sweep.dir")
        return
    given = _value(args, "hydra.run.dir")
    run_dir = Path(given) if given is not None else Path("outputs") / command
    check_writable(run_dir, "hydra.run.dir")
    if given is None:
        return
    lock = RunDirLock(run_dir, command)
    if lock.path.exists():
        lock.acquire().release()  # raises RunDirBusy while its holder lives
    claim(run_dir, command, continuing=command == "train" and continues(run_dir, args))


class QuietPipe:
    """stdout that ends quietly when its reader has gone (`l2l pretrained | head`): the first write to a closed pipe
    sends the rest of the output to /dev/null instead of raising BrokenPipeError, in our code, rich or logging."""

    def __init__(self, stream):
        self._stream = stream

    def _closed(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # flushing what is buffered now goes nowhere, silently
        os.close(devnull)

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._closed()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _print_usage(stream) -> None:
    print(USAGE, file=stream)
    width = max(len(name) for name in COMMANDS) + 2  # the longest name keeps a gap before its help
    for name, (_, help_text) in COMMANDS.items():
        print(f"  {name:<{width}}{help_text}", file=stream)
    print("Run `l2l <command> --help` for a command's config groups and keys.", file=stream)


def main(argv: list[str] | None = None) -> None:
    if not isinstance(sys.stdout, QuietPipe) and hasattr(sys.stdout, "fileno"):
        sys.stdout = QuietPipe(sys.stdout)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_usage(sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"l2l: unknown command {command!r}, allowed values: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    if command in PLAIN_COMMANDS:
        importlib.import_module(COMMANDS[command][0]).main(rest)
        return
    # Lazy, documented: hydra, omegaconf and torch load only for the Hydra commands, so `l2l --help`, `l2l plot`
    # and `l2l pretrained` start without them.
    from l2l_cli.cli.errors import DEBUG_ENV, exit_on_error

    if "--debug" in rest or os.environ.get("HYDRA_FULL_ERROR") == "1":
        os.environ[DEBUG_ENV] = "1"
    rest = [arg for arg in rest if arg != "--debug"]
    # let composition errors reach us instead of Hydra's multi-line report (errors inside the job are turned into
    # one line by commands.hydra_task before Hydra sees them)
    os.environ["HYDRA_FULL_ERROR"] = "1"
    import hydra

    from l2l_cli.cli.config import config_dir, register_schemas  # lazy, as above

    register_schemas()
    if command == "train":
        rest = rank_overrides(rest)
    try:
        check_run_dir(command, rest)
    except Exception as exc:  # noqa: BLE001 - one line, as for any error
        exit_on_error(exc)
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv = [f"l2l {command}", *rest]
    given = _value(rest, "hydra.run.dir")
    kept = KeptHydraRecord(Path(given)) if command == "train" and given and continues(Path(given), rest) else None
    try:
        hydra.main(config_path=config_dir(), config_name=command, version_base="1.3")(module.main)()
    except SystemExit as exc:
        if kept is not None and exc.code not in (None, 0):
            kept.restore()
        raise
    except (Exception, KeyboardInterrupt) as exc:
        if kept is not None:
            kept.restore()
        exit_on_error(exc)


if __name__ == "__main__":
    main()
