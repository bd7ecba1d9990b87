"""`l2l train`: meta-train the learned optimizer, keep best/last checkpoints, then evaluate best.pt."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from l2l_cli import pretrained
from l2l_cli.cli.config import continue_recorded, resumed_command, to_objects
from l2l_cli.cli.console import fmt, progress
from l2l_cli.cli.evaluate import evaluate
from l2l_cli.cli.hydra_task import hydra_task
from l2l_cli.cli.job import RunHistory, job_threads, output_dir, record_run, write_metrics
from l2l_cli.cli.run_dir_lock import RunDirLock, claim
from l2l_cli.core.checkpoints import CHECKPOINT_LIMIT, check_architecture, load_checkpoint
from l2l_cli.core.environment import configure_torch, earlier_environments, resolve_device
from l2l_cli.core.files import write_text
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.run_layout import run_dir_of
from l2l_cli.core.schemas import ConfigError, EvalConfig, TrainConfig
from l2l_cli.core.signals import GracefulStop
from l2l_cli.core.user_files import UserFileError, read_json, sha256
from l2l_cli.meta.distributed import Rank, from_environment, join_group, shared_value
from l2l_cli.meta.launch import TrainingResult, run_training
from l2l_cli.meta.policy import plan_training
from l2l_cli.meta.population import find_resume, last_checkpoint_of
from l2l_cli.meta.stopping import StopRequested
from l2l_cli.meta.trainer import improvement, not_improved_message
from l2l_cli.meta.trainer_checkpoints import check_iterations_left
from l2l_cli.optimizees import build_family
from l2l_cli.reporting.writers import TensorBoardWriter

log = logging.getLogger("l2l.train")


def train(conf: TrainConfig, out_dir: Path, launched: Optional[Rank] = None) -> TrainingResult:
    """Meta-train every member of the population, with a progress bar; Ctrl-C stops after the iteration.
    ``launched``: this process's rank when torchrun or SLURM started it as one of a group."""
    if conf.optimizer.name not in OPTIMIZERS.learned():
        raise ConfigError(f"optimizer: train needs a learned optimizer, got {conf.optimizer.name!r}, "
                          f"allowed values: {', '.join(OPTIMIZERS.learned())}")
    configure_torch(conf.threads)
    setup = plan_training(family=build_family(conf.optimizee), optimizee=conf.optimizee, optimizer=conf.optimizer,
                          schedule=conf.schedule, loop=conf.train, seed=conf.seed, data_seed=conf.data_seed,
                          device=resolve_device(conf.device), out_dir=out_dir, compile=conf.compile,
                          estimator=conf.estimator)
    population, iterations = conf.train.population, conf.train.iterations
    quiet = launched is not None and not launched.writes
    with GracefulStop(quiet=quiet) as stopper, progress(disable=quiet) as bar:
        task = bar.add_task("meta-train", total=population * iterations, completed=0, info="")

        done: dict = {}  # member -> its iterations so far (members may train side by side)

        def on_start(k: int, t) -> None:
            if setup.member_processes == 1:  # one after another: the members before k are over
                done.update({j: iterations for j in range(k)})
            done[k] = t.iteration
            bar.update(task, completed=sum(done.values()))

        def on_iteration(k: int, t, stats) -> None:
            name = "" if population == 1 else f"member {k}: "
            val = t.history[-1][1] if t.history else float("nan")
            done[k] = t.iteration
            bar.update(task, completed=sum(done.values()),
                       info=f"{name}loss {fmt(stats.mean_loss)}  val {fmt(val)}  best {fmt(t.best_val)}")

        try:
            return run_training(setup, population, conf.resume, rank=launched, writer_for=TensorBoardWriter,
                                on_start=on_start, on_iteration=on_iteration, should_stop=stopper.stop)
        except StopRequested:
            requeue = stopper.requeue()
            if requeue is not None:  # SLURM's time limit or a preemption: last.pt is written; requeue the job
                log.warning("preempted or at the time limit: last.pt written; requeuing the job, which resumes it")
                requeue(stopper.signum, None)
            raise


def requeued() -> bool:
    """This is a SLURM job that was requeued and started again."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def run(cfg: DictConfig) -> float:
    started = time.monotonic()
    out_dir = output_dir()
    launched = from_environment()  # one of several ranks started by torchrun or SLURM
    writes = launched is None or launched.writes
    with RunDirLock(out_dir, "train") if writes else contextlib.nullcontext():
        return _run(cfg, out_dir, launched, writes, started)


def _history(out_dir: Path, source: Optional[Path], overrides: list[str],
             started_from: Optional[dict] = None) -> RunHistory:
    """The overrides that rebuild this run's config, those of each resume, and the environments of the earlier
    segments: a resumed run keeps the command its run.json recorded, with this command line's changes, and
    rewrites Hydra's .hydra/overrides.yaml (which Hydra has just replaced with this command line's) to match, so
    reports and `l2l pretrained add` read the run's command and the commit it started at, not only the last
    resume's."""
    if source is None:
        return RunHistory(overrides, started_from=started_from)
    try:
        previous = read_json((source if source.is_dir() else run_dir_of(source)) / "run.json")
    except UserFileError:
        return RunHistory(overrides)
    recorded, resumes = previous.get("command"), previous.get("resumes", [])
    if not (isinstance(recorded, list) and all(isinstance(o, str) for o in recorded) and isinstance(resumes, list)):
        return RunHistory(overrides)  # a run recorded before run.json kept its command
    command = resumed_command(recorded, overrides)
    if (out_dir / ".hydra").is_dir():
        write_text(out_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(command)))
    kept = previous.get("started_from")
    return RunHistory(command, [*resumes, overrides], earlier_environments(previous),
                      kept if isinstance(kept, dict) else None)


def _starting_point(conf: TrainConfig) -> tuple[Optional[str], Optional[dict]]:
    """train.init -> (the checkpoint file, what run.json records of it: as given, the file and its SHA-256), checked
    before the run dir is touched; one line when it names no checkpoint of this learned optimizer."""
    init = conf.train.init
    if init is None:
        return None, None
    path = pretrained.resolve(init)
    if not path.is_file():
        raise ConfigError(f"train.init: no checkpoint file at {path} (a .pt written by l2l train, or pretrained:NAME "
                          "as `l2l pretrained` lists them)")
    payload = load_checkpoint(path)
    saved = payload.get("optimizer")
    if not isinstance(saved, dict) or not isinstance(payload.get("model"), dict):
        raise ConfigError(f"train.init: {path} holds no learned optimizer (a .pt written by l2l train)")
    check_architecture(path, saved, conf.optimizer.architecture())
    return str(path), {"checkpoint": init, "file": str(path), "sha256": sha256(path, CHECKPOINT_LIMIT, "train.init")}


def _run(cfg: DictConfig, out_dir: Path, launched: Optional[Rank], writes: bool, started: float) -> float:
    conf: TrainConfig = to_objects(cfg)  # every check before anything else
    if launched is not None:  # rank 0's run dir and resume decision are the run's
        join_group(launched, resolve_device(conf.device), conf.train.dist_timeout)
        out_dir = Path(shared_value("out_dir", str(out_dir), launched))
    overrides = list(HydraConfig.get().overrides.task)
    source = None
    if writes:
        explicit = any(o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra)
        source = find_resume(conf.resume, out_dir, explicit, "train", conf.optimizee.name)
    if launched is not None:
        source = shared_value("resume", str(source or ""), launched) or None
    if source is not None:
        source = Path(source)
        cfg = continue_recorded(cfg, source if source.is_dir() else run_dir_of(source), overrides)
        conf = to_objects(cfg)
        conf.resume = str(source)
        if writes:  # before run.json records the smaller count
            last = source if source.is_file() else last_checkpoint_of(source)
            if last is not None:
                check_iterations_left(int(load_checkpoint(last)["iteration"]), conf.train.iterations, last)
    if source is None and requeued() and (out_dir / "checkpoints" / "last.pt").is_file():
        source = out_dir  # this SLURM job was requeued (time limit, preemption, scontrol requeue): continue it
        log.info("requeued job (restart %s): resuming %s", os.environ.get("SLURM_RESTART_COUNT"), out_dir)
        conf.resume = str(source)
    conf.train.init, started_from = _starting_point(conf)
    if writes:  # also when a config file, not the command line, named the dir
        claim(out_dir, "train", continuing=source is not None and (source == out_dir or out_dir in source.parents))
    conf.threads = job_threads(conf.threads)
    configure_torch(conf.threads)  # before record_run, so run.json records the threads actually used
    if writes:
        record_run(cfg, out_dir, _history(out_dir, source, overrides, started_from))
    else:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports
    training = train(conf, out_dir, launched)
    result = training.population
    members, winner, best_path = result.members, result.winner, result.best_path
    if not training.writes:  # rank 0 writes the metrics and evaluates
        return members[winner].best_val
    best = members[winner]
    verdict = improvement(best.history, best.best_val)
    if not verdict["improved"]:
        log.warning(not_improved_message(verdict, conf.train.meta_lr))
    metrics = {"val_best": best.best_val, "best_iteration": best.best_iteration, **verdict,
               "iterations": best.iteration, "stopped_by_patience": best.patience_over,
               "skipped_updates": sum(t.skipped_total for t in members),
               "validation_history": [list(h) for h in best.history],
               "train_seconds": round(time.monotonic() - started, 1)}
    if len(members) > 1:
        metrics["best_member"] = winner
        metrics["members"] = [{"member": k, "val_best": t.best_val, "best_iteration": t.best_iteration,
                               "iterations": t.iteration, "validation_history": [list(h) for h in t.history]}
                              for k, t in enumerate(members)]
    write_metrics(out_dir, metrics)
    if conf.train.evaluate:
        eval_conf = EvalConfig(seed=conf.seed, data_seed=conf.data_seed, device=conf.device, threads=conf.threads,
                               compile=conf.compile,
                               optimizee=conf.optimizee, optimizer=conf.optimizer, schedule=conf.schedule,
                               eval=conf.eval, checkpoint=str(best_path))
        metrics["test_final_mean"] = evaluate(eval_conf, out_dir / "eval", config_record=None)
        metrics["total_seconds"] = round(time.monotonic() - started, 1)
        write_metrics(out_dir, metrics)
    return best.best_val


main = hydra_task(run)
