"""The meta-training loop: optimizee runs, validation on fixed functions, best/last checkpoints, exact resume."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from l2l_cli.files import remember_checkpoint
from l2l_cli.meta.checkpoint import (
    CheckpointError,
    check_architecture,
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from l2l_cli.meta.distributed import DistributedRun, Rank, agree_stop, distributed_score, share
from l2l_cli.meta.evolution import PerturbedRun
from l2l_cli.meta.unroll import OptimizeeRun, RunStats, meta_train_run
from l2l_cli.meta.weights import copy_into
from l2l_cli.optimizees.base import Family, held_out_problems
from l2l_cli.optimizees.rescaled import training_family
from l2l_cli.optimizers import build_learned
from l2l_cli.optimizers.base import LearnedOptimizer, bind_to_family
from l2l_cli.optimizers.compiled import maybe_compile
from l2l_cli.rollout import selection_score
from l2l_cli.schemas import TrainLoopConfig, TruncatedScheduleConfig
from l2l_cli.seeding import generator, stream_seed

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """Too many non-finite meta-updates in a row; the message suggests what to lower."""


class StopRequested(RuntimeError):
    """Raised after a signal once the current iteration is done and the last checkpoint is written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):
        return StopRequested, (str(self), self.signum)


NOT_IMPROVED_HINT = ("lower train.meta_lr, check optimizer.output_scale and optimizer.preprocess, or train for more "
                     "iterations")


def random_scale(loop: TrainLoopConfig, optimizer) -> float:
    """train.random_scale, or where null the learned optimizer's own recipe (``suggested_random_scale``)."""
    if loop.random_scale is not None:
        return float(loop.random_scale)
    return float(getattr(optimizer, "suggested_random_scale", 0.0))


def copy_state(state: dict) -> dict:
    return {name: value.detach().clone() for name, value in state.items()}


def improvement(history, best_val: float) -> dict:
    """Whether meta-training helped: the best validation score against the untrained optimizer's (iteration 0)."""
    untrained = next((float(val) for iteration, val in history if iteration == 0), math.nan)
    improved = math.isfinite(best_val) and not (math.isfinite(untrained) and best_val >= untrained)
    return {"untrained_val": untrained, "best_val": best_val, "improved": improved}


def not_improved_message(verdict: dict, meta_lr: float) -> str:
    return (f"meta-training did not help: best validation loss {verdict['best_val']:.4g} >= the untrained "
            f"optimizer's {verdict['untrained_val']:.4g}; {NOT_IMPROVED_HINT} (train.meta_lr was {meta_lr:g})")


def gradient_estimator(net: LearnedOptimizer, manual: bool, second_order: bool, compiled: bool):
    """The architecture's hand-written first-order BPTT when asked for (train.bptt=manual) and it has one; None:
    autograd (second_order always uses it)."""
    if not manual or second_order:
        return None
    if not net.supports_manual_bptt:
        log.info("%s has no hand-written BPTT: its meta-gradients come from autograd", net.name)
        return None
    return net.manual_bptt(compiled)


@dataclass(frozen=True)
class TrainSetup:
    """Everything the loop needs, as plain values (no config framework); ``meta.policy.plan_training`` builds it
    with the run's compile and worker decisions made."""

    family: Family
    optimizer: object  # the learned optimizer's config dataclass
    schedule: TruncatedScheduleConfig
    loop: TrainLoopConfig
    batch_size: int
    seed: int
    data_seed: int
    device: torch.device
    out_dir: Path
    optimizee: Optional[object] = None  # the optimizee config dataclass, recorded in checkpoints
    compile: bool = False
    member: int = 0  # index in a population of independent meta-trainings (0: the run's seed itself)
    # ranks sharing each batch's functions on this machine (policy.resolve_workers; meta.launch starts them); 1: this
    # process alone. A MetaTrainer itself is always one rank: ``rank`` says which.
    workers: int = 1


class MetaTrainer:
    """``rank``: this process's place in a distributed run (``meta.distributed``), or None for a single process."""

    def __init__(self, setup: TrainSetup, writer=None, rank: Optional[Rank] = None):
        self.s = setup
        self.rank = rank
        # member 0 is exactly a single run with this seed; the others draw independent initialisations and functions
        torch.manual_seed(setup.seed if setup.member == 0 else stream_seed(setup.seed, "init", setup.member))
        self.net = build_learned(setup.optimizer).to(setup.device)
        bind_to_family(self.net, setup.family)
        compiled = maybe_compile(self.net, setup.compile)  # never for es / pes (policy.plan_training)
        self.manual = gradient_estimator(self.net, setup.loop.bptt == "manual", setup.loop.second_order,
                                         compiled) if setup.loop.estimator == "tbptt" else None
        self.meta_opt = torch.optim.Adam(self.net.parameters(), lr=setup.loop.meta_lr)
        # training functions; a CPU generator so runs reproduce across devices
        self.gen = generator(setup.seed, "train", setup.member)
        self.train_family = training_family(setup.family, random_scale(setup.loop, setup.optimizer))
        self.val_problems: dict = {}  # validation horizon -> its fixed functions
        # the curriculum's place (schedule=curriculum; one stage otherwise): the stage, when it began, validations
        # in a row without a gain, the score at its start of the weights it started from, and whether it is over
        self.stage, self.stage_start, self.stale, self.reference, self.finished = 0, 0, 0, math.inf, False
        self.best_weights: Optional[dict] = None
        self.writer = writer
        # the averaged weights are what validation, best.pt and evaluation see; the raw ones keep training
        self.ema = [p.detach().clone() for p in self.net.parameters()] if setup.loop.ema_decay > 0 else None
        if rank is None or rank.writes:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.iteration = 0
        self.best_val = math.inf
        self.best_iteration = -1
        self.skipped_total = 0
        self.skipped_in_row = 0
        self.history: list = []  # (iteration, validation loss)

    @property
    def checkpoint_dir(self) -> Path:
        return self.s.out_dir / "checkpoints"

    # -- checkpoints ------------------------------------------------------------------------------------------
    def payload(self) -> dict:
        return {
            "optimizer": asdict(self.s.optimizer),
            **({"parameter_groups": self.net.binding()} if self.net.binding() is not None else {}),
            "optimizee": asdict(self.s.optimizee) if self.s.optimizee is not None else {},
            "schedule": asdict(self.s.schedule),
            "model": self.evaluated_state(),
            **({"trained_model": self.net.state_dict()} if self.ema is not None else {}),
            "meta_optimizer": self.meta_opt.state_dict(),
            "rng": self.gen.get_state(),
            "iteration": self.iteration,
            "best_val": self.best_val,
            "best_iteration": self.best_iteration,
            "skipped_total": self.skipped_total,
            "history": [list(h) for h in self.history],
            "seed": self.s.seed,
            "member": self.s.member,
            "data_seed": self.s.data_seed,
            "curriculum": {"stage": self.stage, "stage_start": self.stage_start, "stale": self.stale,
                           "reference": self.reference, "finished": self.finished},
        }

    def save(self, name: str) -> Path:
        path = self.checkpoint_dir / name
        if self.rank is None or self.rank.writes:  # every rank holds the same state; one writes it
            # the directory is made once, at the start: a run whose directory was removed stops and says so
            save_checkpoint(self.payload(), path, make_dirs=False)
            if name == "last.pt":
                remember_checkpoint(path, self.iteration)
        return path

    def restore(self, payload: dict, path) -> None:
        check_architecture(path, payload["optimizer"], self.s.optimizer.architecture())
        if int(payload.get("member", 0)) != self.s.member:
            raise CheckpointError(f"checkpoint {path}: it is population member {payload.get('member', 0)}'s, "
                                  f"not member {self.s.member}'s")
        self.net.load_state_dict(payload.get("trained_model", payload["model"]))
        if self.ema is not None:
            averaged = payload["model"]
            self.ema = [averaged[name].clone() for name, _ in self.net.named_parameters()]
        self.meta_opt.load_state_dict(payload["meta_optimizer"])
        self.gen.set_state(payload["rng"])
        self.iteration = int(payload["iteration"])
        self.best_val = float(payload["best_val"])
        self.best_iteration = int(payload["best_iteration"])
        self.skipped_total = int(payload.get("skipped_total", 0))
        self.history = [tuple(h) for h in payload.get("history", [])]
        place = payload.get("curriculum", {})
        self.stage, self.stage_start = int(place.get("stage", 0)), int(place.get("stage_start", 0))
        self.stale, self.reference = int(place.get("stale", 0)), float(place.get("reference", math.inf))
        self.finished = bool(place.get("finished", False))
        self._carry_over(Path(path).with_name("best.pt"))

    def _carry_over(self, source: Path) -> None:
        """Resuming into another run dir: bring the checkpoints along, so the new run is complete even when no
        later validation beats the best; without a best.pt, forget the old best so the next validation writes one."""
        target = self.checkpoint_dir / "best.pt"
        if source.resolve() == target.resolve():
            return
        self.save("last.pt")
        if source.is_file():
            if self.rank is None or self.rank.writes:
                copy_checkpoint(source, target)
        else:
            self.best_val, self.best_iteration = math.inf, -1

    # -- weight averaging -------------------------------------------------------------------------------------
    def evaluated_state(self) -> dict:
        """The weights validation and evaluation use: the moving average when it is on, else the trained ones."""
        state = self.net.state_dict()
        if self.ema is not None:
            names = [name for name, _ in self.net.named_parameters()]
            state.update({name: avg.clone() for name, avg in zip(names, self.ema, strict=True)})
        return state

    @torch.no_grad()
    def update_average(self) -> None:
        if self.ema is not None:
            # warm-up (as TensorFlow's ExponentialMovingAverage with num_updates): early on, the average must not
            # hold on to the untrained initial weights
            decay = min(self.s.loop.ema_decay, (1 + self.iteration) / (10 + self.iteration))
            for avg, p in zip(self.ema, self.net.parameters(), strict=True):
                avg.lerp_(p.detach(), 1 - decay)

    # -- loop -------------------------------------------------------------------------------------------------
    def validate(self) -> float:
        if self.ema is None:
            return self._score()
        trained = [p.detach().clone() for p in self.net.parameters()]
        copy_into(list(self.net.parameters()), self.ema)  # swap the average in, in place
        try:
            return self._score()
        finally:
            copy_into(list(self.net.parameters()), trained)

    @property
    def horizon(self) -> int:
        """The optimizee steps of this stage's training runs."""
        return self.s.schedule.horizons()[self.stage]

    @property
    def val_horizon(self) -> int:
        """The steps validation runs: the next stage's horizon in a curriculum, else the training horizon."""
        horizons = self.s.schedule.horizons()
        return horizons[min(self.stage + 1, len(horizons) - 1)]

    def _score(self) -> float:
        steps = self.val_horizon
        if steps not in self.val_problems:
            self.val_problems[steps] = held_out_problems(self.s.family, self.s.loop.val_functions, steps,
                                                         self.s.data_seed, "validation", self.s.device)
        problem = self.val_problems[steps]
        self.net.eval()
        try:
            if self.rank is None:
                return selection_score(self.s.family, problem, self.net, steps)
            return distributed_score(self.s.family, problem, self.net, steps, self.rank)
        finally:
            self.net.train()

    # -- curriculum ---------------------------------------------------------------------------------------------
    @property
    def curriculum(self) -> bool:
        return len(self.s.schedule.horizons()) > 1

    def curriculum_step(self, gain: bool) -> None:
        """After a validation: end the stage after ``patience`` validations without a gain or ``stage_iterations``
        iterations; then restore its best weights and advance, or finish where it gained nothing or was the last."""
        schedule = self.s.schedule
        self.stale = 0 if gain else self.stale + 1
        if self.stale < schedule.patience and self.iteration - self.stage_start < schedule.stage_iterations:
            return
        gained = self.best_val < self.reference
        # the stage's best, or where it gained nothing the best it started from (after a resume: best.pt's)
        self.restore_weights(self.best_weights or load_checkpoint(self.checkpoint_dir / "best.pt"))
        last = self.stage + 1 >= len(schedule.horizons())
        log.info("curriculum: stage %d (%d steps) ended at iteration %d: %s", self.stage, self.horizon,
                 self.iteration, "its best weights restored" if gained else
                 "no gain: the weights it started from restored")
        self._log("curriculum/stage", float(self.stage))
        if not gained or last:
            self.finished = True
            return
        self.stage, self.stage_start, self.stale = self.stage + 1, self.iteration, 0
        self.reference = self.validate()  # the restored weights at the new stage's validation horizon
        self.best_val = self.reference
        log.info("curriculum: stage %d trains %d steps, validates at %d (starting from %.4g)", self.stage,
                 self.horizon, self.val_horizon, self.reference)

    def restore_weights(self, payload: dict) -> None:
        """The weights of a checkpoint of this run (trained and averaged); the meta-optimizer's state goes on."""
        self.net.load_state_dict(payload.get("trained_model", payload["model"]))
        if self.ema is not None:
            self.ema = [payload["model"][name].clone() for name, _ in self.net.named_parameters()]

    def meta_lr(self, iteration: int) -> float:
        """The meta learning rate for an iteration: a function of the iteration alone, so resume reproduces it."""
        loop = self.s.loop
        if loop.meta_lr_schedule == "constant":
            return loop.meta_lr
        progress = min(iteration / max(loop.iterations, 1), 1.0)
        return loop.meta_lr * (loop.meta_lr_final + (1 - loop.meta_lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))

    def train_iteration(self) -> RunStats:
        s = self.s
        for group in self.meta_opt.param_groups:
            group["lr"] = self.meta_lr(self.iteration)
        family = self.train_family
        problem = family.sample(s.batch_size, self.horizon, self.gen, s.device)
        lengths = s.schedule.unroll_lengths(self.horizon, self.gen)
        start, stop = 0, s.batch_size
        if self.rank is not None:  # this rank's share; the meta-gradient all-reduced
            start, stop = share(s.batch_size, self.rank)
            problem = family.select(problem, start, stop)
        if s.loop.estimator == "tbptt":
            run = OptimizeeRun(family, problem, self.net, s.loop.second_order, s.schedule.weighting, self.manual)
        else:
            run = PerturbedRun(family, problem, self.net, self.gen, sigma=s.loop.es.sigma, pairs=s.loop.es.pairs,
                               persistent=s.loop.estimator == "pes", weighting=s.schedule.weighting,
                               rows=(start, stop, s.batch_size))
        if self.rank is not None:
            run = DistributedRun(run, (stop - start) / s.batch_size)
        return meta_train_run(run, self.net, self.meta_opt, lengths, clip_grad=s.loop.clip_grad)

    def _log(self, tag: str, value: float) -> None:
        if self.writer is not None and math.isfinite(value):
            self.writer.scalar(tag, value, self.iteration)

    def fit(self, on_iteration: Optional[Callable] = None, should_stop: Callable[[], int] = lambda: 0) -> float:
        """Train until ``loop.iterations``; returns the best validation loss."""
        loop = self.s.loop
        if self.iteration == 0:
            self.history.append((0, self.validate()))
            self._log("val/final_loss", self.history[-1][1])
            if self.curriculum:
                self.reference = self.history[-1][1]
        while self.iteration < loop.iterations and not self.finished:
            stats = self.train_iteration()
            self.update_average()
            self.iteration += 1
            self.skipped_total += stats.skipped_updates
            for ok in stats.finite:
                self.skipped_in_row = 0 if ok else self.skipped_in_row + 1
            self._log("train/mean_loss", stats.mean_loss)
            self._log("train/final_loss", stats.final_loss)
            self._log("train/meta_grad_norm", stats.grad_norm)
            self._log("train/meta_lr", self.meta_opt.param_groups[0]["lr"])
            self._log("train/skipped_updates_total", float(self.skipped_total))
            if stats.skipped_updates:
                log.warning("iteration %d: skipped %d meta-update(s) with a non-finite loss or meta-gradient",
                            self.iteration, stats.skipped_updates)
            if self.skipped_in_row >= loop.max_nonfinite:
                self.save("last.pt")
                scale = getattr(self.s.optimizer, "output_scale", None)
                raise DivergenceError(
                    f"meta-training diverged: {self.skipped_in_row} meta-updates in a row had a non-finite loss or "
                    f"meta-gradient; try a lower train.meta_lr (now {loop.meta_lr})"
                    + (f" or optimizer.output_scale (now {scale})" if scale is not None else ""))
            last = self.iteration == loop.iterations
            if self.iteration % loop.val_every == 0 or last:
                val = self.validate()
                self.history.append((self.iteration, val))
                self._log("val/final_loss", val)
                gain = val < min(self.best_val, self.reference)
                if val < self.best_val:
                    self.best_val, self.best_iteration = val, self.iteration
                    self.save("best.pt")
                    if self.curriculum:  # what the stage's end restores, on every rank
                        self.best_weights = {"model": self.evaluated_state(),
                                             "trained_model": copy_state(self.net.state_dict())}
                self._log("val/best_final_loss", self.best_val)
                if self.curriculum:
                    self.curriculum_step(gain)
            stop = should_stop()  # a signal number, or 0
            if self.rank is not None:  # all ranks stop after the same iteration
                stop = agree_stop(stop, self.s.device)
            if self.iteration % loop.checkpoint_every == 0 or last or stop or self.finished:
                self.save("last.pt")
            if on_iteration:
                on_iteration(self, stats)
            if stop:
                raise StopRequested(f"stopped by signal {stop} after iteration {self.iteration}; last checkpoint "
                                    f"written to {self.checkpoint_dir / 'last.pt'} (continue with resume=true)", stop)
        if self.best_iteration < 0:  # every validation was non-finite: keep the last model as 'best' so eval runs
            self.save("best.pt")
        return self.best_val
