"""`l2l train`: meta-train the learned optimizer, keep best/last checkpoints, then evaluate best.pt."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig

from l2l_cli.commands import hydra_task
from l2l_cli.commands.common import job_threads, output_dir, record_run, resolve_resume, write_metrics
from l2l_cli.config import LEARNED_OPTIMIZERS, ConfigError, EvalConfig, TrainConfig, to_objects
from l2l_cli.console import fmt, progress
from l2l_cli.meta.checkpoint import copy_checkpoint, load_checkpoint
from l2l_cli.meta.parallel import resolve_workers
from l2l_cli.meta.population import (
    FIRST_MEMBER_LAST,
    best_member,
    member_dir,
    member_tb_dir,
    population_run_dir,
)
from l2l_cli.meta.trainer import MetaTrainer, TrainSetup
from l2l_cli.optimizees import build_family
from l2l_cli.optimizers.compiled import should_compile
from l2l_cli.runtime import configure_torch, release_freed_memory, resolve_device
from l2l_cli.signals import GracefulStop
from l2l_cli.writers import TensorBoardWriter

log = logging.getLogger("l2l.train")


def train(conf: TrainConfig, out_dir: Path) -> tuple[list[MetaTrainer], int, Path]:
    """Meta-train every member of the population; returns (the trainers, the winner's index, the run's best.pt)."""
    if conf.optimizer.name not in LEARNED_OPTIMIZERS:
        raise ConfigError(f"optimizer: train needs a learned optimizer, got {conf.optimizer.name!r}, "
                          f"allowed values: {', '.join(LEARNED_OPTIMIZERS)}")
    configure_torch(conf.threads)
    device = resolve_device(conf.device)
    population, iterations = conf.train.population, conf.train.iterations
    resume_files = member_resume_files(conf.resume, out_dir, population)
    setup = TrainSetup(family=build_family(conf.optimizee), optimizer=conf.optimizer, schedule=conf.schedule,
                       loop=conf.train, batch_size=conf.optimizee.batch_size, seed=conf.seed,
                       data_seed=conf.data_seed, device=device, out_dir=out_dir, optimizee=conf.optimizee,
                       compile=False)
    work = conf.optimizee.batch_size * setup.family.num_params * conf.schedule.num_steps * iterations
    setup.compile = should_compile(conf.compile, work)
    setup.workers = resolve_workers(conf.train.workers, torch.get_num_threads(), conf.optimizee.batch_size,
                                    setup.family.num_params, work, device)
    members: list[MetaTrainer] = []
    with GracefulStop() as stopper, progress() as bar:
        task = bar.add_task("meta-train", total=population * iterations, completed=0, info="")
        for k, resume_from in enumerate(resume_files):
            done = k * iterations
            name = "" if population == 1 else f"member {k}: "

            def on_iteration(t: MetaTrainer, stats, done=done, name=name) -> None:
                val = t.history[-1][1] if t.history else float("nan")
                bar.update(task, completed=done + t.iteration,
                           info=f"{name}loss {fmt(stats.mean_loss)}  val {fmt(val)}  best {fmt(t.best_val)}")

            writer = TensorBoardWriter(member_tb_dir(out_dir, k, population))
            trainer = None
            try:
                trainer = MetaTrainer(replace(setup, member=k, out_dir=member_dir(out_dir, k, population)), writer)
                if resume_from is not None:
                    trainer.restore(load_checkpoint(resume_from), resume_from)
                    log.info("%sresumed from %s at iteration %d (best validation loss %s)", name, resume_from,
                             trainer.iteration, fmt(trainer.best_val))
                bar.update(task, completed=done + trainer.iteration)
                trainer.fit(on_iteration, should_stop=stopper.stop)
            finally:
                writer.close()
                if trainer is not None:
                    trainer.close()
            log.info("%sbest validation loss %s at iteration %d; checkpoints in %s", name, fmt(trainer.best_val),
                     trainer.best_iteration, trainer.checkpoint_dir)
            members.append(trainer)
            release_freed_memory()
    winner = best_member([t.best_val for t in members])
    best_path = members[winner].checkpoint_dir / "best.pt"
    if population > 1:
        best_path = copy_checkpoint(best_path, out_dir / "checkpoints" / "best.pt")  # it records its member index
        log.info("member %d is best (validation loss %s); its best.pt is %s", winner, fmt(members[winner].best_val),
                 best_path)
    return members, winner, best_path


def member_resume_files(resume, out_dir: Path, population: int) -> list[Path | None]:
    """Each member's last.pt to resume from (None: the member starts fresh)."""
    if population == 1:
        return [resolve_resume(resume, out_dir)]
    first = resolve_resume(resume, out_dir, FIRST_MEMBER_LAST)
    if first is None:
        return [None] * population
    run_dir = population_run_dir(first)
    if run_dir is None:
        raise ConfigError(f"resume: with train.population={population} pass a run directory (its members resume "
                          f"together), got {first}")
    files = [member_dir(run_dir, k, population) / "checkpoints" / "last.pt" for k in range(population)]
    return [path if path.is_file() else None for path in files]


def run(cfg: DictConfig) -> float:
    conf: TrainConfig = to_objects(cfg)
    conf.threads = job_threads(conf.threads)
    configure_torch(conf.threads)  # before record_run, so run.json records the threads actually used
    out_dir = output_dir()
    record_run(cfg, out_dir)
    members, winner, best_path = train(conf, out_dir)
    best = members[winner]
    metrics = {"val_best": best.best_val, "best_iteration": best.best_iteration,
               "iterations": best.iteration, "skipped_updates": sum(t.skipped_total for t in members),
               "validation_history": [list(h) for h in best.history]}
    if len(members) > 1:
        metrics["best_member"] = winner
        metrics["members"] = [{"member": k, "val_best": t.best_val, "best_iteration": t.best_iteration,
                               "iterations": t.iteration, "validation_history": [list(h) for h in t.history]}
                              for k, t in enumerate(members)]
    write_metrics(out_dir, metrics)
    if conf.train.evaluate:
        from l2l_cli.commands.evaluate import evaluate

        eval_conf = EvalConfig(seed=conf.seed, data_seed=conf.data_seed, device=conf.device, threads=conf.threads,
                               compile=conf.compile,
                               optimizee=conf.optimizee, optimizer=conf.optimizer, schedule=conf.schedule,
                               eval=conf.eval, checkpoint=str(best_path))
        metrics["test_final_mean"] = evaluate(eval_conf, out_dir / "eval", config_record=None)
        write_metrics(out_dir, metrics)
    return best.best_val


main = hydra_task(run)
