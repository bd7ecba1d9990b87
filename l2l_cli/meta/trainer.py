"""The meta-training loop: optimizee runs, validation on fixed functions, best/last checkpoints, exact resume."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from l2l_cli.config import LSTMConfig, TrainLoopConfig, TruncatedScheduleConfig
from l2l_cli.meta.checkpoint import check_architecture, save_checkpoint
from l2l_cli.meta.unroll import RunStats, meta_train_run
from l2l_cli.optimizees.base import Family, held_out_problems
from l2l_cli.optimizers.compiled import maybe_compile
from l2l_cli.optimizers.lstm import CoordinatewiseLSTM, LearnedRule
from l2l_cli.rollout import mean_final_loss, rollout
from l2l_cli.seeding import generator

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """Too many non-finite meta-updates in a row; the message suggests what to lower."""


class StopRequested(RuntimeError):
    """Raised after a signal once the current iteration is done and the last checkpoint is written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def build_net(cfg: LSTMConfig) -> CoordinatewiseLSTM:
    return CoordinatewiseLSTM(hidden_size=cfg.hidden_size, layers=cfg.layers, preprocess=cfg.preprocess,
                              preprocess_p=cfg.preprocess_p, output_scale=cfg.output_scale)


@dataclass
class TrainSetup:
    """Everything the loop needs, as plain values (no config framework)."""

    family: Family
    optimizer: LSTMConfig
    schedule: TruncatedScheduleConfig
    loop: TrainLoopConfig
    batch_size: int
    seed: int
    data_seed: int
    device: torch.device
    out_dir: Path
    optimizee: Optional[object] = None  # the optimizee config dataclass, recorded in checkpoints
    compile: bool = False


class MetaTrainer:
    def __init__(self, setup: TrainSetup, writer=None):
        self.s = setup
        torch.manual_seed(setup.seed)  # LSTM initialisation
        self.net = build_net(setup.optimizer).to(setup.device)
        maybe_compile(self.net, setup.compile)
        self.meta_opt = torch.optim.Adam(self.net.parameters(), lr=setup.loop.meta_lr)
        self.gen = generator(setup.seed, "train")  # training functions; CPU so runs reproduce across devices
        self.val_problem = held_out_problems(setup.family, setup.loop.val_functions, setup.schedule.num_steps,
                                             setup.data_seed, "validation", setup.device)
        self.writer = writer
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
            "optimizee": asdict(self.s.optimizee) if self.s.optimizee is not None else {},
            "schedule": asdict(self.s.schedule),
            "model": self.net.state_dict(),
            "meta_optimizer": self.meta_opt.state_dict(),
            "rng": self.gen.get_state(),
            "iteration": self.iteration,
            "best_val": self.best_val,
            "best_iteration": self.best_iteration,
            "skipped_total": self.skipped_total,
            "history": [list(h) for h in self.history],
            "seed": self.s.seed,
            "data_seed": self.s.data_seed,
        }

    def save(self, name: str) -> Path:
        return save_checkpoint(self.payload(), self.checkpoint_dir / name)

    def restore(self, payload: dict, path) -> None:
        check_architecture(path, payload["optimizer"], self.s.optimizer.architecture())
        self.net.load_state_dict(payload["model"])
        self.meta_opt.load_state_dict(payload["meta_optimizer"])
        for group in self.meta_opt.param_groups:  # the configured meta lr wins over the saved one
            group["lr"] = self.s.loop.meta_lr
        self.gen.set_state(payload["rng"])
        self.iteration = int(payload["iteration"])
        self.best_val = float(payload["best_val"])
        self.best_iteration = int(payload["best_iteration"])
        self.skipped_total = int(payload.get("skipped_total", 0))
        self.history = [tuple(h) for h in payload.get("history", [])]

    # -- loop -------------------------------------------------------------------------------------------------
    def validate(self) -> float:
        self.net.eval()
        losses = rollout(self.s.family, self.val_problem, LearnedRule(self.net), self.s.schedule.num_steps)
        self.net.train()
        return mean_final_loss(losses)

    def train_iteration(self) -> RunStats:
        s = self.s
        problem = s.family.sample(s.batch_size, s.schedule.num_steps, self.gen, s.device)
        return meta_train_run(s.family, problem, self.net, self.meta_opt, s.schedule.num_steps, s.schedule.unroll,
                              second_order=s.loop.second_order, clip_grad=s.loop.clip_grad,
                              weighting=s.schedule.weighting)

    def _log(self, tag: str, value: float) -> None:
        if self.writer is not None and math.isfinite(value):
            self.writer.scalar(tag, value, self.iteration)

    def fit(self, on_iteration: Optional[Callable] = None, should_stop: Callable[[], int] = lambda: 0) -> float:
        """Train until ``loop.iterations``; returns the best validation loss."""
        loop = self.s.loop
        if self.iteration == 0:
            self.history.append((0, self.validate()))
            self._log("val/final_loss", self.history[-1][1])
        while self.iteration < loop.iterations:
            stats = self.train_iteration()
            self.iteration += 1
            self.skipped_total += stats.skipped_updates
            for ok in stats.finite:
                self.skipped_in_row = 0 if ok else self.skipped_in_row + 1
            self._log("train/mean_loss", stats.mean_loss)
            self._log("train/final_loss", stats.final_loss)
            self._log("train/meta_grad_norm", stats.grad_norm)
            self._log("train/skipped_updates_total", float(self.skipped_total))
            if stats.skipped_updates:
                log.warning("iteration %d: skipped %d meta-update(s) with a non-finite loss or meta-gradient",
                            self.iteration, stats.skipped_updates)
            if self.skipped_in_row >= loop.max_nonfinite:
                self.save("last.pt")
                raise DivergenceError(
                    f"meta-training diverged: {self.skipped_in_row} meta-updates in a row had a non-finite loss or "
                    f"meta-gradient; try a lower train.meta_lr (now {loop.meta_lr}) or optimizer.output_scale "
                    f"(now {self.s.optimizer.output_scale})")
            last = self.iteration == loop.iterations
            if self.iteration % loop.val_every == 0 or last:
                val = self.validate()
                self.history.append((self.iteration, val))
                self._log("val/final_loss", val)
                if val < self.best_val:
                    self.best_val, self.best_iteration = val, self.iteration
                    self.save("best.pt")
                self._log("val/best_final_loss", self.best_val)
            stop = should_stop()  # a signal number, or 0
            if self.iteration % loop.checkpoint_every == 0 or last or stop:
                self.save("last.pt")
            if on_iteration:
                on_iteration(self, stats)
            if stop:
                raise StopRequested(f"stopped by signal {stop} after iteration {self.iteration}; last checkpoint "
                                    f"written to {self.checkpoint_dir / 'last.pt'} (continue with resume=true)", stop)
        if self.best_iteration < 0:  # every validation was non-finite: keep the last model as 'best' so eval runs
            self.save("best.pt")
        return self.best_val
