"""The paper's MNIST optimizee: an MLP classifier whose weights, flattened, are the parameters to optimise.

n optimizees (different initialisations and minibatch streams) run side by side: every layer is one batched
matmul over all of them, and theta is an (n, num_params) tensor like any other family's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from l2l_cli.optimizees.digits import Pools

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


@dataclass
class MLPProblems:
    theta0: torch.Tensor  # (n, num_params)
    batches: torch.Tensor  # (num_steps + 1, n, minibatch) indices into the pool: a fresh minibatch every step
    images: torch.Tensor  # the pool (N, 784)
    labels: torch.Tensor  # (N,)
    subsets: Optional[torch.Tensor] = None  # (n, S) each function's own images, when it uses part of the pool

    def __len__(self) -> int:
        return self.theta0.shape[0]


class MLPFamily:
    """Cross-entropy of an MLP 784 -> hidden x layers -> 10 on a minibatch of a fixed image pool."""

    stationary = False  # a new minibatch every step

    def __init__(self, pools: Pools, hidden: int = 20, layers: int = 1, activation: str = "sigmoid",
                 minibatch: int = 128, init_std: float = 0.01, images_per_function: int | None = None):
        self.pools = pools
        self.images_per_function = images_per_function
        self.activation = ACTIVATIONS[activation]
        self.minibatch = minibatch
        self.init_std = init_std
        inputs = pools.train[0].shape[1]
        self.sizes = [inputs] + [hidden] * layers + [10]
        self.shapes = []  # (weight shape, bias length) per layer, in flat order
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            self.shapes.append(((fan_in, fan_out), fan_out))
        self.num_params = sum(a * b + c for (a, b), c in self.shapes)

    def sample(self, n: int, num_steps: int, gen: torch.Generator, device="cpu", split: str = "train"):
        images, labels = self.pools.pool(split)
        theta0 = torch.randn(n, self.num_params, generator=gen) * self.init_std
        size = len(images) if self.images_per_function is None else min(self.images_per_function, len(images))
        batches = torch.randint(size, (num_steps + 1, n, self.minibatch), generator=gen)
        subsets = None
        if size < len(images):
            # each function is a classifier on its own random subset: with the subset as large as the held-out
            # pools, meta-training functions see each image as often as test functions do (same memorisation)
            subsets = torch.rand(n, len(images), generator=gen).argsort(dim=1)[:, :size]
            batches = subsets[torch.arange(n).view(1, n, 1), batches]
            subsets = subsets.to(device)
        return MLPProblems(theta0.to(device), batches.to(device), images.to(device), labels.to(device), subsets)

    def initial_params(self, problem: MLPProblems) -> torch.Tensor:
        return problem.theta0.clone()

    def select(self, problem: MLPProblems, start: int, stop: int) -> MLPProblems:
        subsets = None if problem.subsets is None else problem.subsets[start:stop]
        return MLPProblems(problem.theta0[start:stop], problem.batches[:, start:stop], problem.images,
                           problem.labels, subsets)

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

    def example_losses(self, problem: MLPProblems, theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of function i on images idx[i], shape (n, k)."""
        logits = self.logits(theta, problem.images[idx])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), problem.labels[idx].reshape(-1),
                               reduction="none").view(idx.shape)

    def loss(self, problem: MLPProblems, theta: torch.Tensor, step: int) -> torch.Tensor:
        return self.example_losses(problem, theta, problem.batches[step]).mean(1)

    def expected_loss(self, problem: MLPProblems, theta: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Each function's mean cross-entropy over all the images it draws minibatches from."""
        n = theta.shape[0]
        if problem.subsets is None:
            idx = torch.arange(len(problem.images), device=theta.device).expand(n, -1)
        else:
            idx = problem.subsets
        total = theta.new_zeros(n)
        chunk = chunk or max(1, 2**16 // n)  # images per pass: at most ~2^16 gathered images (200 MB) at once
        for start in range(0, idx.shape[1], chunk):
            total += self.example_losses(problem, theta, idx[:, start: start + chunk]).sum(1)
        return total / idx.shape[1]

    def analytic_loss_and_grad(self, problem, theta, step):
        return None  # autograd (loss_and_grad) handles it
