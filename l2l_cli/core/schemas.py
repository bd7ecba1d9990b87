"""The config dataclasses every command and every numerical module take: defaults, range and cross-field checks.

This module imports neither hydra nor omegaconf. Family and learned-optimizer configs live next to their code
(``optimizees/<family>.py``, ``optimizers/learned/<architecture>.py``, ``optimizers/baselines/<rule>.py``,
``meta/estimators/<estimator>.py``, ``meta/schedules/<schedule>.py``) and extend the bases here; the CLI layer
(``cli/config.py``) registers all of them with Hydra and turns a composed DictConfig into these objects.
Defaults are written once, here or in those modules: the YAML files under conf/ only select a schema, wire keys
together with interpolations and document them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from l2l_cli.core.checks import (  # noqa: F401 - re-exported: every config module imports them from here
    MISSING,
    ConfigError,
    as_dataclass,
    check,
    check_at_least_one,
    check_choice,
)
from l2l_cli.core.registry import OPTIMIZERS

# --- optimizee families -------------------------------------------------------------------------------------------

@dataclass
class Suggested:
    """A family's sensible budget and meta-training recipe; train.*, schedule.* and eval.* interpolate these unless
    set on the command line."""

    iterations: int = 1500
    population: int = 1  # train.population
    val_every: int = 50
    val_functions: int = 256  # validation functions for the learned optimizer during meta-training
    tune_functions: int = 256  # validation functions that tune the baselines' learning rates in eval
    test_functions: int = 1024
    weighting: str = "uniform"  # schedule.weighting
    meta_lr_schedule: str = "constant"  # train.meta_lr_schedule
    ema_decay: float = 0.0  # train.ema_decay

    def check(self) -> None:
        check_at_least_one(self, "optimizee.suggested.",
                           ("iterations", "population", "val_every", "val_functions", "tune_functions",
                            "test_functions"))


@dataclass
class OptimizeeConfig:
    """What every family's config has: its registered name, the functions per meta-iteration, its recipe.

    A subclass names itself with ``name`` (its registry key), adds its own fields and checks them in
    ``check_fields``; ``__post_init__`` runs the shared checks first.
    """

    name: str = MISSING
    batch_size: int = 1  # functions trained side by side in each meta-iteration
    suggested: Suggested = field(default_factory=Suggested)

    def __post_init__(self) -> None:
        self.suggested = as_dataclass(Suggested, self.suggested)
        self.suggested.check()
        check_at_least_one(self, "optimizee.", ("batch_size",))
        self.check_fields()

    def check_fields(self) -> None:
        """The family's own range checks."""


# --- optimizers ---------------------------------------------------------------------------------------------------

@dataclass
class LearnedOptimizerConfig:
    """What every learned optimizer's config has: its registered name. ``architecture()`` lists the fields a
    checkpoint must agree on to be loaded with this config."""

    name: str = MISSING

    def architecture(self) -> dict:
        return asdict(self)


# --- commands -----------------------------------------------------------------------------------------------------

DEVICES = ("cpu", "cuda", "auto")
META_LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainLoopConfig:
    iterations: int = 1500  # optimizee runs (per population member); each gives num_steps / unroll meta-updates
    # independent meta-trainings (own initialisation and training functions); the one with the best validation
    # score becomes the run's best.pt
    population: int = 1
    # processes training the population's members side by side on the CPU, each with threads / N torch threads;
    # null (auto): one per thread (at most one per member) for runs long enough to repay their start, when the
    # members' own functions are not already shared out over workers; 1: members one after another in this process
    parallel_members: Optional[int] = None
    meta_lr: float = 3e-3
    meta_lr_schedule: str = "constant"  # constant | cosine (from meta_lr down to meta_lr * meta_lr_final)
    meta_lr_final: float = 0.1
    # validate and checkpoint an exponential moving average of the learned optimizer's weights (decay per
    # iteration; 0 = off)
    ema_decay: float = 0.0
    clip_grad: Optional[float] = 1.0
    # L2 penalty on the learned optimizer's weight matrices (not its biases or scalars), added to the meta-gradient:
    # keeps a generalising optimizer's weights small (Metz et al.)
    weight_decay: float = 0.0
    # divide each meta-gradient by the running RMS of its group's (a mixture's member's) meta-gradient norms, so
    # every member steers the learned optimizer by its weight, not by how steep its loss is (meta.balance)
    balance_members: bool = False
    # processes sharing each batch's functions on the CPU, each with threads / workers torch threads; null (auto):
    # one per thread for runs long enough to repay their start, when each gets enough coordinates; 1: no workers
    workers: Optional[int] = None
    dist_timeout: float = 300.0  # seconds a collective waits for the other ranks before the run stops with an error
    val_every: int = 50
    val_functions: int = 256
    checkpoint_every: int = 50
    # stop after this many validations in a row without a new best (0: run every iteration); the checkpoint kept
    # is still the best one
    patience: int = 0
    max_nonfinite: int = 10  # consecutive non-finite (skipped) meta-updates before the run stops
    evaluate: bool = True  # run `l2l eval` on best.pt at the end, into <run>/eval
    # c > 0: each training function's coordinates rescaled by exp(U(-c, c)) (Lv et al. 2017: 3); 0: off; null: the
    # learned optimizer's recipe (3 for rnnprop, else 0). Validation and evaluation never rescale.
    random_scale: Optional[float] = None
    # a checkpoint (a .pt path, or pretrained:NAME) whose learned-optimizer weights this new meta-training starts
    # from, e.g. to fine-tune with other settings; its meta-optimizer state, progress and best are not carried over
    # (that is resume). null: a fresh initialisation.
    init: Optional[str] = None

    def __post_init__(self) -> None:
        check(self.init is None or (isinstance(self.init, str) and self.init.strip() != ""), "train.init",
              f"must be a checkpoint path or pretrained:NAME (or null), got {self.init!r}")
        check_at_least_one(self, "train.", ("iterations", "population", "val_every", "val_functions",
                                            "checkpoint_every", "max_nonfinite"))
        check(math.isfinite(self.meta_lr) and self.meta_lr > 0, "train.meta_lr",
              f"must be a positive number, got {self.meta_lr}")
        check_choice(self.meta_lr_schedule, "train.meta_lr_schedule", META_LR_SCHEDULES)
        check(self.dist_timeout > 0, "train.dist_timeout", f"must be > 0 seconds, got {self.dist_timeout}")
        check(self.workers is None or self.workers >= 1, "train.workers",
              f"must be >= 1 or null (auto), got {self.workers}")
        check(self.parallel_members is None or self.parallel_members >= 1, "train.parallel_members",
              f"must be >= 1 or null (auto), got {self.parallel_members}")
        check(0 <= self.meta_lr_final <= 1, "train.meta_lr_final", f"must be in [0, 1], got {self.meta_lr_final}")
        check(0 <= self.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        check(self.random_scale is None or (math.isfinite(self.random_scale) and self.random_scale >= 0),
              "train.random_scale", f"must be >= 0 (0 = off) or null (the learned optimizer's recipe), got "
              f"{self.random_scale}")
        check(type(self.patience) is int and self.patience >= 0, "train.patience",
              f"must be a whole number >= 0 (0: off), got {self.patience!r}")
        check(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "train.weight_decay",
              f"must be a number >= 0, got {self.weight_decay}")
        check(self.clip_grad is None or self.clip_grad > 0, "train.clip_grad",
              f"must be > 0 or null (no clipping), got {self.clip_grad}")


# the baselines an evaluation tunes unless eval.baselines says otherwise (the registry holds more: adamw, lion)
DEFAULT_BASELINES = ("sgd", "nag", "rmsprop", "adam")


LR_SEARCHES = ("staged", "grid")


@dataclass
class EvalLoopConfig:
    num_functions: int = 1024
    num_steps: Optional[int] = None  # null: schedule.num_steps
    val_functions: int = 256  # validation functions used to tune baseline learning rates
    # half-decade steps from 1e-4 to 10 (rounded to 1 and 3 per decade)
    lr_grid: List[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0,
                                                          10.0])
    # rounds of refinement after the grid: try the best value x and / 10^(1/4), then 10^(1/8), ..., keeping the
    # best of all (2: eighth-decade resolution around the optimum for four more runs per baseline; 0 = grid only)
    refine_lr: int = 2
    # how the grid is searched: staged (screen every other value on a quarter of the validation functions, then the
    # best and its neighbours on all, then refine; runs that diverge or fall far behind stop early; candidates run
    # batched) | grid (every value on every function, one at a time: the reference staged is checked against)
    lr_search: str = "staged"
    # the registered baselines to tune and compare with, in the table's order (`l2l eval --help` lists them)
    baselines: List[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    # a directory where baseline tunings and their test curves are kept, keyed by everything they depend on (task,
    # validation and test functions, grid, baseline, learning rate, device, torch): evaluations of several optimizers
    # on one task then tune and test each baseline once (experiment=generalization_matrix); null: every time
    tuning_cache: Optional[str] = None
    # name -> {optimizee: {field: value}, num_steps: N}: evaluate one optimizer on several variants of the task
    variants: Dict[str, Any] = field(default_factory=dict)
    # processes evaluating the variants side by side on the CPU, threads / N threads each; null (auto): one per
    # thread, at most one per variant; 1: one variant after another in this process
    parallel_variants: Optional[int] = None
    # name -> checkpoint: more learned optimizers run beside the studied one on every task and variant, as more
    # columns (LSTM-sub, or optimizer=lstm beside lstm_sep); a null entry is left out. On the command line
    # +eval.compare.NAME=PATH (+: a new key)
    compare: Dict[str, Optional[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_at_least_one(self, "eval.", ("num_functions", "val_functions"))
        check(self.num_steps is None or self.num_steps >= 1, "eval.num_steps",
              f"must be >= 1 or null, got {self.num_steps}")
        check(len(self.lr_grid) > 0, "eval.lr_grid", "must not be empty")
        check(self.parallel_variants is None or self.parallel_variants >= 1, "eval.parallel_variants",
              f"must be >= 1 or null (auto), got {self.parallel_variants}")
        check(self.refine_lr >= 0, "eval.refine_lr", f"must be >= 0 (rounds of refinement), got {self.refine_lr}")
        check_choice(self.lr_search, "eval.lr_search", LR_SEARCHES)
        for lr in self.lr_grid:
            check(math.isfinite(lr) and lr > 0, "eval.lr_grid", f"every value must be positive, got {lr}")
        for name in self.baselines:
            check_choice(name, "eval.baselines", tuple(sorted(OPTIMIZERS.baselines())))
        for name in self.compare:
            check(name not in OPTIMIZERS.baselines(), f"eval.compare.{name}",
                  "a baseline's name; name the other learned optimizer otherwise (e.g. lstm_sub)")


@dataclass
class CommonConfig:
    seed: int = 0
    data_seed: int = 0  # seeds the fixed validation and test functions, shared by every training seed
    device: str = "cpu"  # cpu | cuda | auto
    # torch.set_num_threads; null keeps torch's default, or a fair share of the cores in parallel sweeps
    threads: Optional[int] = None
    # torch.compile the learned optimizer's step: true | false | null (auto: when the run is long enough to repay
    # compiling)
    compile: Optional[bool] = None
    optimizee: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    eval: EvalLoopConfig = field(default_factory=EvalLoopConfig)

    def __post_init__(self) -> None:
        check_choice(self.device, "device", DEVICES)
        check(self.threads is None or self.threads >= 1, "threads", f"must be >= 1 or null, got {self.threads}")
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        check(self.data_seed >= 0, "data_seed", f"must be >= 0, got {self.data_seed}")


@dataclass
class TrainConfig(CommonConfig):
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    estimator: Any = MISSING  # the meta-gradient estimator's config (``estimator=`` group)
    resume: Any = False  # false | true (latest run) | path to a run dir or last.pt

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.resume, (bool, str)), "resume", "must be true, false or a path")


@dataclass
class EvalConfig(CommonConfig):
    checkpoint: Optional[str] = None  # required with a learned optimizer: a best.pt or last.pt from l2l train
    # unused by eval: an experiment file that sets a training recipe (experiment=general) serves eval as well
    estimator: Any = None
    train: Any = None
