"""The meta-training tasks the benchmarks time, and the setups `l2l train optimizee=<task>` makes for them."""

from __future__ import annotations

import statistics
from typing import Tuple

from benchmarks.flops import coordinate_steps
from benchmarks.harness import RESULTS
from l2l_cli.core.registry import ESTIMATORS, OPTIMIZERS
from l2l_cli.core.schemas import TrainLoopConfig
from l2l_cli.meta.policy import plan_training
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.meta.trainer import MetaTrainer
from l2l_cli.optimizees import build_family
from l2l_cli.optimizees.convnet import ConvNetConfig
from l2l_cli.optimizees.mnist import MLPConfig
from l2l_cli.optimizees.neural_art import NeuralArtConfig
from l2l_cli.optimizees.quadratic import QuadraticConfig
from l2l_cli.optimizers.learned.lstm import LSTMConfig
from l2l_cli.optimizers.learned.lstm_sep import LSTMSepConfig

TASKS = {"quadratic": QuadraticConfig(), "mnist": MLPConfig(), "neural_art": NeuralArtConfig(),
         "convnet": ConvNetConfig()}
# the learned optimizer each task's experiment meta-trains (the paper's LSTM-sep for the conv net)
TASK_OPTIMIZERS = {"convnet": LSTMSepConfig()}
DEFAULT_ESTIMATOR = "tbptt"


def estimator_modes() -> Tuple[str, ...]:
    """The registered estimators other than truncated BPTT (es, pes, ...): each a mode of the benchmark, eager; and
    <name>-shared for those with ``estimator.shared`` (one perturbation per pair for the whole batch)."""
    names = [name for name in ESTIMATORS.names() if name != DEFAULT_ESTIMATOR]
    return (*names, *(f"{name}-shared" for name in names if hasattr(ESTIMATORS.get(name).default_config(), "shared")))


def estimator_config(mode: str):
    """The estimator config of a mode: the registered defaults, with shared=true for <name>-shared."""
    name, _, variant = mode.partition("-")
    cfg = ESTIMATORS.get(name).default_config()
    if variant == "shared":
        cfg.shared = True
    return cfg


def optimizer_for(task: str, optimizer: str | None = None):
    """The learned optimizer's config: the registered ``optimizer``'s defaults, or (None) the task's own."""
    if optimizer:
        return OPTIMIZERS.get(optimizer).default_config()
    return TASK_OPTIMIZERS.get(task, LSTMConfig())


def setup_for(task: str, device, compiled: bool | None, loop: TrainLoopConfig, unroll: int | None = None,
              estimator: str = DEFAULT_ESTIMATOR, optimizer: str | None = None):
    """The setup `l2l train optimizee=<task> estimator=<estimator>` makes (meta.policy), with this loop and compile
    setting."""
    cfg = TASKS[task]
    return plan_training(family=build_family(cfg), optimizee=cfg, optimizer=optimizer_for(task, optimizer),
                         schedule=TruncatedScheduleConfig(unroll=unroll or 20), loop=loop, seed=0, data_seed=0,
                         device=device, out_dir=RESULTS / "tmp", compile=compiled,
                         estimator=estimator_config(estimator))


def default_workers(task: str, device) -> int:
    """The worker processes `l2l train optimizee=<task>` uses with these threads (train.workers: null)."""
    loop = TrainLoopConfig(iterations=TASKS[task].suggested.iterations)
    return setup_for(task, device, None, loop).workers


def trainer_for(task: str, device, compiled: bool, unroll: int | None = None, estimator: str = DEFAULT_ESTIMATOR,
                optimizer: str | None = None, rank=None) -> MetaTrainer:
    """A trainer of the task in this process (no workers; ``rank``: this process's place in a distributed run),
    which never validates or checkpoints."""
    loop = TrainLoopConfig(iterations=10**9, val_every=10**9, checkpoint_every=10**9, val_functions=1, workers=1)
    return MetaTrainer(setup_for(task, device, compiled, loop, unroll, estimator, optimizer), rank=rank)


def iteration_figures(trainer: MetaTrainer, summary: dict, first: float, model_flops: float, workers: int,
                      threads: int) -> dict:
    """The figures of timed meta-iterations. ``summary``: ``harness.summarise``'s figures for the seconds of one
    iteration; ``first``: the first iteration's seconds (compilation included); ``model_flops``: the learned
    optimizer's FLOPs in one iteration."""
    s = trainer.s
    coord_steps = coordinate_steps(trainer)
    summary = dict(summary)
    seconds = summary.pop("seconds")
    return {"seconds_per_meta_iteration": seconds,
            "seconds_per_meta_iteration_median": statistics.median(b["seconds"] for b in summary["blocks"]),
            "first_iteration_seconds": first, "coordinate_steps_per_second": coord_steps / seconds,
            "model_flops_per_second": model_flops / seconds, **summary, "functions": s.batch_size,
            "coordinates": s.family.num_params, "steps": s.schedule.num_steps, "workers": workers,
            "threads_per_worker": threads}
