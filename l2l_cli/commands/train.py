"""`l2l train`: meta-train the learned optimizer, keep best/last checkpoints, then evaluate best.pt."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from l2l_cli.commands import hydra_task
from l2l_cli.commands.common import job_threads, output_dir, record_run, resolve_resume, write_metrics
from l2l_cli.config import LEARNED_OPTIMIZERS, ConfigError, EvalConfig, TrainConfig, to_objects
from l2l_cli.console import fmt, progress
from l2l_cli.meta.checkpoint import load_checkpoint
from l2l_cli.meta.trainer import MetaTrainer, TrainSetup
from l2l_cli.optimizees import build_family
from l2l_cli.optimizers.compiled import should_compile
from l2l_cli.runtime import configure_torch, resolve_device
from l2l_cli.signals import GracefulStop
from l2l_cli.writers import TensorBoardWriter

log = logging.getLogger("l2l.train")


def train(conf: TrainConfig, out_dir: Path) -> tuple[MetaTrainer, Path]:
    """Meta-train; returns (the trainer, path of best.pt)."""
    if conf.optimizer.name not in LEARNED_OPTIMIZERS:
        raise ConfigError(f"optimizer: train needs a learned optimizer, got {conf.optimizer.name!r}, "
                          f"allowed values: {', '.join(LEARNED_OPTIMIZERS)}")
    configure_torch(conf.threads)
    device = resolve_device(conf.device)
    resume_from = resolve_resume(conf.resume, out_dir)
    setup = TrainSetup(family=build_family(conf.optimizee), optimizer=conf.optimizer, schedule=conf.schedule,
                       loop=conf.train, batch_size=conf.optimizee.batch_size, seed=conf.seed,
                       data_seed=conf.data_seed, device=device, out_dir=out_dir, optimizee=conf.optimizee,
                       compile=False)
    work = conf.optimizee.batch_size * setup.family.num_params * conf.schedule.num_steps * conf.train.iterations
    setup.compile = should_compile(conf.compile, work)
    writer = TensorBoardWriter(out_dir / "tb")
    try:
        trainer = MetaTrainer(setup, writer)
        if resume_from is not None:
            trainer.restore(load_checkpoint(resume_from), resume_from)
            log.info("resumed from %s at iteration %d (best validation loss %s)", resume_from, trainer.iteration,
                     fmt(trainer.best_val))
        with GracefulStop() as stopper, progress() as bar:
            task = bar.add_task("meta-train", total=conf.train.iterations, completed=trainer.iteration, info="")

            def on_iteration(t: MetaTrainer, stats) -> None:
                val = t.history[-1][1] if t.history else float("nan")
                bar.update(task, completed=t.iteration,
                           info=f"loss {fmt(stats.mean_loss)}  val {fmt(val)}  best {fmt(t.best_val)}")

            best = trainer.fit(on_iteration, should_stop=stopper.stop)
    finally:
        writer.close()
    log.info("best validation loss %s at iteration %d; checkpoints in %s", fmt(best), trainer.best_iteration,
             trainer.checkpoint_dir)
    return trainer, trainer.checkpoint_dir / "best.pt"


def run(cfg: DictConfig) -> float:
    conf: TrainConfig = to_objects(cfg)
    conf.threads = job_threads(conf.threads)
    configure_torch(conf.threads)  # before record_run, so run.json records the threads actually used
    out_dir = output_dir()
    record_run(cfg, out_dir)
    trainer, best_path = train(conf, out_dir)
    metrics = {"val_best": trainer.best_val, "best_iteration": trainer.best_iteration,
               "iterations": trainer.iteration, "skipped_updates": trainer.skipped_total,
               "validation_history": [list(h) for h in trainer.history]}
    write_metrics(out_dir, metrics)
    if conf.train.evaluate:
        from l2l_cli.commands.evaluate import evaluate

        eval_conf = EvalConfig(seed=conf.seed, data_seed=conf.data_seed, device=conf.device, threads=conf.threads,
                               compile=conf.compile,
                               optimizee=conf.optimizee, optimizer=conf.optimizer, schedule=conf.schedule,
                               eval=conf.eval, checkpoint=str(best_path))
        metrics["test_final_mean"] = evaluate(eval_conf, out_dir / "eval", config_record=None)
        write_metrics(out_dir, metrics)
    return trainer.best_val


main = hydra_task(run)
