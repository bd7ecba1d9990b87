"""The meta-training loop: optimizee runs, a meta-update per truncation, validation on fixed functions, best/last
checkpoints. Its parts are objects of their own: the estimator (``estimators``), the schedule and curriculum
(``schedules``), the weight average (``averaging``), validation (``validation``), checkpoints
(``trainer_checkpoints``) and stopping (``stopping``)."""

from __future__ import annotations

import logging
import math
from typing import Callable, Optional

import torch

from l2l_cli.core.checkpoints import load_checkpoint
from l2l_cli.core.memory import FLOAT_BYTES, check_fits
from l2l_cli.core.random_streams import generator, stream_seed
from l2l_cli.core.registry import ESTIMATORS, SCHEDULES
from l2l_cli.core.schemas import TrainLoopConfig
from l2l_cli.meta.averaging import WeightAverage
from l2l_cli.meta.balance import GroupBalance
from l2l_cli.meta.distributed import DistributedRun, Rank, share
from l2l_cli.meta.meta_updates import RunStats, meta_train_run
from l2l_cli.meta.schedules.curriculum import Curriculum
from l2l_cli.meta.setup import TrainSetup
from l2l_cli.meta.stopping import NonFiniteGuard, StopRequested, StopSignal
from l2l_cli.meta.trainer_checkpoints import TrainerCheckpoints, restore_weights
from l2l_cli.meta.validation import Validator
from l2l_cli.optimizees.base import batch_group, problem_bytes, run_horizon
from l2l_cli.optimizees.rescaled import training_family
from l2l_cli.optimizers.learned import build_learned
from l2l_cli.optimizers.learned.base import bind_to_family
from l2l_cli.optimizers.learned.compiled import maybe_compile

log = logging.getLogger(__name__)

NOT_IMPROVED_HINT = ("lower train.meta_lr, check optimizer.output_scale and optimizer.preprocess, or train for more "
                     "iterations")


def random_scale(loop: TrainLoopConfig, optimizer) -> float:
    """train.random_scale, or where null the learned optimizer's own recipe (``suggested_random_scale``)."""
    if loop.random_scale is not None:
        return float(loop.random_scale)
    return float(getattr(optimizer, "suggested_random_scale", 0.0))


def improvement(history, best_val: float) -> dict:
    """Whether meta-training helped: the best validation score against the untrained optimizer's (iteration 0)."""
    untrained = next((float(val) for iteration, val in history if iteration == 0), math.nan)
    improved = math.isfinite(best_val) and not (math.isfinite(untrained) and best_val >= untrained)
    return {"untrained_val": untrained, "best_val": best_val, "improved": improved}


def not_improved_message(verdict: dict, meta_lr: float) -> str:
    return (f"meta-training did not help: best validation loss {verdict['best_val']:.4g} >= iteration 0's "
            f"{verdict['untrained_val']:.4g} (the weights it started from); {NOT_IMPROVED_HINT} (train.meta_lr was "
            f"{meta_lr:g})")


def meta_lr_at(loop: TrainLoopConfig, iteration: int) -> float:
    """The meta learning rate for an iteration: a function of the iteration alone, so resume reproduces it."""
    if loop.meta_lr_schedule == "constant":
        return loop.meta_lr
    progress = min(iteration / max(loop.iterations, 1), 1.0)
    return loop.meta_lr * (loop.meta_lr_final + (1 - loop.meta_lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))


def meta_optimizer(net, loop) -> torch.optim.Adam:
    """Adam on the learned optimizer's weights; ``loop.weight_decay`` an L2 penalty on its matrices only."""
    if loop.weight_decay == 0:
        return torch.optim.Adam(net.parameters(), lr=loop.meta_lr)
    matrices = [p for p in net.parameters() if p.dim() >= 2]
    others = [p for p in net.parameters() if p.dim() < 2]
    return torch.optim.Adam([{"params": matrices, "weight_decay": loop.weight_decay}, {"params": others}],
                            lr=loop.meta_lr)


def state_floats_per_coordinate(net, num_params: int) -> int:
    """The learned optimizer's state per optimizee coordinate, from its state for one function on the meta device
    (shapes only: nothing is allocated, whatever the size)."""
    try:
        state = net.init_state(torch.zeros(1, num_params, device="meta"))
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return 0  # a rule whose state cannot be built on the meta device: the bound counts no state
    tensors = torch.utils._pytree.tree_leaves(state)
    return sum(t.numel() for t in tensors if isinstance(t, torch.Tensor)) // max(num_params, 1)


def check_training_fits(setup: TrainSetup, net, differentiates: bool) -> None:
    """Before the first sample: a batch of functions, and the learned optimizer's state for every step of an unroll
    that backpropagates, fit in this machine's memory (one line naming the keys otherwise)."""
    family, batch = setup.family, setup.batch_size
    unroll = getattr(setup.schedule, "unroll", 1) if differentiates else 1
    state = batch * family.num_params * state_floats_per_coordinate(net, family.num_params) * (unroll + 1)
    need = problem_bytes(family, batch, setup.schedule.num_steps) + state * FLOAT_BYTES
    check_fits(need, f"meta-training {batch} functions of {family.num_params} parameters with {net.name}'s state "
               f"over unrolls of {unroll} steps", "optimizee size / optimizee.batch_size / schedule.unroll")


class MetaTrainer:
    """``rank``: this process's place in a distributed run (``meta.distributed``), or None for a single process."""

    def __init__(self, setup: TrainSetup, writer=None, rank: Optional[Rank] = None):
        self.s, self.rank, self.writer = setup, rank, writer
        # member 0 is exactly a single run with this seed; the others draw independent initialisations and functions
        torch.manual_seed(setup.seed if setup.member == 0 else stream_seed(setup.seed, "init", setup.member))
        self.net = build_learned(setup.optimizer).to(setup.device)
        bind_to_family(self.net, setup.family)
        compiled = maybe_compile(self.net, setup.compile)  # only for estimators that compile (policy.plan_training)
        self.estimator = ESTIMATORS.get(setup.estimator.name).build(setup.estimator, self.net, compiled)
        check_training_fits(setup, self.net, self.estimator.differentiates)
        self.meta_opt = meta_optimizer(self.net, setup.loop)
        # training functions; a CPU generator so runs reproduce across devices
        self.gen = generator(setup.seed, "train", setup.member)
        self.train_family = training_family(setup.family, random_scale(setup.loop, setup.optimizer))
        self.schedule = SCHEDULES.get(setup.schedule.name).build(setup.schedule)
        self.curriculum = Curriculum.of(self.schedule)
        self.average = WeightAverage(self.net, setup.loop.ema_decay)
        self.balance = GroupBalance() if setup.loop.balance_members else None
        self.validator = Validator(setup.family, setup.loop.val_functions, setup.data_seed, setup.device, rank)
        self.guard = NonFiniteGuard(setup.loop.max_nonfinite)
        self.checkpoints = TrainerCheckpoints(self, setup.out_dir / "checkpoints", rank is None or rank.writes)
        self.iteration, self.best_val, self.best_iteration = 0, math.inf, -1
        self.history: list = []  # (iteration, validation loss)
        self.started_from = False  # train.init: iteration 0 scores the weights it started from, a candidate best
        self.best_weights: Optional[dict] = None  # a curriculum stage's best, what the stage's end restores

    @property
    def skipped_total(self) -> int:
        return self.guard.total

    @property
    def checkpoint_dir(self):
        return self.checkpoints.directory

    @property
    def patience_over(self) -> bool:
        """train.patience validations in a row (after iteration 0) without a new best."""
        patience = self.s.loop.patience
        stale = sum(1 for iteration, _ in self.history if iteration > max(self.best_iteration, 0))
        return patience > 0 and stale >= patience

    def save(self, name: str):
        return self.checkpoints.save(name)

    def restore(self, payload: dict, path) -> None:
        self.checkpoints.restore(payload, path)

    def start_from(self, payload: dict, path) -> None:
        self.checkpoints.start_from(payload, path)
        self.started_from = True

    def validate(self) -> float:
        with self.average.swapped_in():
            score = self.validator.score(self.net, self.curriculum.val_horizon)
        for member, value in self.validator.parts.items():  # a mixture's members, each on its own functions
            self._log(f"val/{member}", value)
        return score

    def train_iteration(self) -> RunStats:
        s = self.s
        for group in self.meta_opt.param_groups:
            group["lr"] = meta_lr_at(s.loop, self.iteration)
        horizon = self.curriculum.horizon
        problem = self.train_family.sample(s.batch_size, horizon, self.gen, s.device)
        horizon = run_horizon(self.train_family, problem, horizon)  # a mixture's member has its own
        lengths = self.schedule.unroll_lengths(horizon, self.gen)
        start, stop = 0, s.batch_size
        if self.rank is not None:  # this rank's share; the meta-gradient all-reduced
            start, stop = share(s.batch_size, self.rank)
            problem = self.train_family.select(problem, start, stop)
        run = self.estimator.start(self.train_family, problem, gen=self.gen, weighting=s.schedule.weighting,
                                   rows=(start, stop, s.batch_size), horizon=horizon)
        if self.rank is not None:
            run = DistributedRun(run, (stop - start) / s.batch_size)
        balance = None
        if self.balance is not None:
            group = batch_group(self.train_family, problem)
            balance = lambda norm: self.balance.scale(group, norm)  # noqa: E731
        return meta_train_run(run, self.net, self.meta_opt, lengths, clip_grad=s.loop.clip_grad, balance=balance)

    def fit(self, on_iteration: Optional[Callable] = None, should_stop: Callable[[], int] = lambda: 0) -> float:
        """Train until ``loop.iterations`` (or the curriculum's end); returns the best validation loss."""
        loop = self.s.loop
        stop_signal = StopSignal(should_stop, self.rank, self.s.device)
        if self.iteration == 0:
            self.history.append((0, self.validate()))
            self._log("val/final_loss", self.history[-1][1])
            if self.started_from:  # a fine-tuning that finds nothing better keeps the weights it started from
                self.best_val, self.best_iteration = self.history[-1][1], 0
                self.save("best.pt")
            self.curriculum.reference = self.history[-1][1] if self.curriculum.active else math.inf
        while self.iteration < loop.iterations and not self.curriculum.finished and not self.patience_over:
            stats = self.train_iteration()
            self.average.update(self.iteration)
            self.iteration += 1
            self.guard.record(stats.finite)
            self._log_training(stats)
            if self.guard.tripped:
                self.save("last.pt")
                raise self.guard.error(loop.meta_lr, getattr(self.s.optimizer, "output_scale", None))
            last = self.iteration == loop.iterations
            if self.iteration % loop.val_every == 0 or last:
                self._validation_round()
            stop = stop_signal.poll()  # a signal number, or 0; all ranks stop after the same iteration
            patience_over = self.patience_over
            if patience_over:
                log.info("no better validation in the last %d: meta-training stops after iteration %d "
                         "(train.patience); best.pt is iteration %d's", loop.patience, self.iteration,
                         self.best_iteration)
            if (self.iteration % loop.checkpoint_every == 0 or last or stop or self.curriculum.finished
                    or patience_over):
                self.save("last.pt")
            if on_iteration:
                on_iteration(self, stats)
            if stop:
                # meta-training may have ended in this same iteration: resuming then trains no further
                then = ("meta-training had finished: resume=true evaluates it without training further" if
                        last or patience_over or self.curriculum.finished else "continue with resume=true")
                raise StopRequested(f"stopped by signal {stop} after iteration {self.iteration}; last checkpoint "
                                    f"written to {self.checkpoint_dir / 'last.pt'} ({then})", stop)
        if self.best_iteration < 0:  # every validation was non-finite: keep the last model as 'best' so eval runs
            self.save("best.pt")
        return self.best_val

    def _validation_round(self) -> None:
        val = self.validate()
        self.history.append((self.iteration, val))
        self._log("val/final_loss", val)
        gain = val < min(self.best_val, self.curriculum.reference)
        if val < self.best_val:
            self.best_val, self.best_iteration = val, self.iteration
            self.save("best.pt")
            if self.curriculum.active:  # what the stage's end restores, on every rank
                self.best_weights = {"model": self.average.evaluated_state(),
                                     "trained_model": {k: v.detach().clone() for k, v in self.net.state_dict().items()}}
        self._log("val/best_final_loss", self.best_val)
        if self.curriculum.active and self.curriculum.stage_over(gain, self.iteration):
            self._end_stage()

    def _end_stage(self) -> None:
        """Restore the stage's best weights (or, where it gained nothing, those it started from: after a resume,
        best.pt's) and advance to the next stage, or finish."""
        c = self.curriculum
        gained = self.best_val < c.reference
        restore_weights(self, self.best_weights or load_checkpoint(self.checkpoint_dir / "best.pt"))
        log.info("curriculum: stage %d (%d steps) ended at iteration %d: %s", c.stage, c.horizon, self.iteration,
                 "its best weights restored" if gained else "no gain: the weights it started from restored")
        self._log("curriculum/stage", float(c.stage))
        if c.end_stage(gained):
            c.advance(self.iteration, math.inf)
            c.reference = self.validate()  # the restored weights at the new stage's validation horizon
            self.best_val = c.reference
            log.info("curriculum: stage %d trains %d steps, validates at %d (starting from %.4g)", c.stage, c.horizon,
                     c.val_horizon, c.reference)

    def _log_training(self, stats: RunStats) -> None:
        self._log("train/mean_loss", stats.mean_loss)
        self._log("train/final_loss", stats.final_loss)
        self._log("train/meta_grad_norm", stats.grad_norm)
        self._log("train/meta_lr", self.meta_opt.param_groups[0]["lr"])
        self._log("train/skipped_updates_total", float(self.guard.total))
        if stats.skipped_updates:
            log.warning("iteration %d: skipped %d meta-update(s) with a non-finite loss or meta-gradient",
                        self.iteration, stats.skipped_updates)

    def _log(self, tag: str, value: float) -> None:
        if self.writer is not None and math.isfinite(value):
            self.writer.scalar(tag, value, self.iteration)
