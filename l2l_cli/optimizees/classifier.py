"""What the image-classifier families share (the MNIST MLP, the conv net): a function is a network trained by
cross-entropy on a fresh minibatch of its own images at every step, n functions side by side in one batched
computation over theta (n, num_params). A subclass gives its parameters' first values and its per-image losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from l2l_cli.optimizees.digits import Pools


@dataclass
class ClassifierProblems:
    theta0: torch.Tensor  # (n, num_params)
    batches: torch.Tensor  # (num_steps + 1, n, minibatch) indices into the pool: a fresh minibatch every step
    images: torch.Tensor  # the pool (N, ...)
    labels: torch.Tensor  # (N,)
    subsets: Optional[torch.Tensor] = None  # (n, S) each function's own images, when it uses part of the pool

    def __len__(self) -> int:
        return self.theta0.shape[0]


class MinibatchClassifier:
    """Sampling, slicing and the expected loss of classifier functions over an image pool."""

    stationary = False  # a new minibatch every step

    def __init__(self, pools: Pools, minibatch: int, images_per_function: Optional[int]):
        self.pools = pools
        self.minibatch = minibatch
        self.images_per_function = images_per_function

    def initial_theta(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """theta_0 of n new functions, (n, num_params), drawn from gen."""
        raise NotImplementedError

    def example_losses(self, problem: ClassifierProblems, theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of function i on images idx[i], shape (n, k)."""
        raise NotImplementedError

    def expected_chunk(self, n: int) -> int:
        """Images per function in one pass of expected_loss."""
        return max(1, 2**16 // n)  # at most ~2^16 gathered images at once

    def sample(self, n: int, num_steps: int, gen: torch.Generator, device="cpu", split: str = "train"):
        images, labels = self.pools.pool(split)
        theta0 = self.initial_theta(n, gen)
        size = len(images) if self.images_per_function is None else min(self.images_per_function, len(images))
        batches = torch.randint(size, (num_steps + 1, n, self.minibatch), generator=gen)
        subsets = None
        if size < len(images):
            # each function is a classifier on its own random subset: with the subset as large as the held-out
            # pools, meta-training functions see each image as often as test functions do (same memorisation)
            subsets = torch.rand(n, len(images), generator=gen).argsort(dim=1)[:, :size]
            batches = subsets[torch.arange(n).view(1, n, 1), batches]
            subsets = subsets.to(device)
        return ClassifierProblems(theta0.to(device), batches.to(device), images.to(device), labels.to(device),
                                  subsets)

    def data_record(self) -> dict:
        return self.pools.record

    def initial_params(self, problem: ClassifierProblems) -> torch.Tensor:
        return problem.theta0.clone()

    def select(self, problem: ClassifierProblems, start: int, stop: int) -> ClassifierProblems:
        subsets = None if problem.subsets is None else problem.subsets[start:stop]
        return ClassifierProblems(problem.theta0[start:stop], problem.batches[:, start:stop], problem.images,
                                  problem.labels, subsets)

    def repeat(self, problem: ClassifierProblems, times: int) -> ClassifierProblems:
        subsets = None if problem.subsets is None else problem.subsets.repeat(times, 1)
        return ClassifierProblems(problem.theta0.repeat(times, 1), problem.batches.repeat(1, times, 1),
                                  problem.images, problem.labels, subsets)

    def loss(self, problem: ClassifierProblems, theta: torch.Tensor, step: int) -> torch.Tensor:
        return self.example_losses(problem, theta, problem.batches[step]).mean(1)

    def expected_loss(self, problem: ClassifierProblems, theta: torch.Tensor,
                      chunk: int | None = None) -> torch.Tensor:
        """Each function's mean cross-entropy over all the images it draws minibatches from."""
        n = theta.shape[0]
        if problem.subsets is None:
            idx = torch.arange(len(problem.images), device=theta.device).expand(n, -1)
        else:
            idx = problem.subsets
        total = theta.new_zeros(n)
        chunk = chunk or self.expected_chunk(n)
        starts = list(range(0, idx.shape[1], chunk))
        if len(starts) > 1 and idx.shape[1] - starts[-1] == 1:
            starts.pop()  # no pass over a single image (batch norm cannot normalise one)
        for start, stop in zip(starts, starts[1:] + [idx.shape[1]], strict=True):
            total += self.example_losses(problem, theta, idx[:, start:stop]).sum(1)
        return total / idx.shape[1]

    def analytic_loss_and_grad(self, problem, theta, step):
        return None  # autograd (loss_and_grad) handles it
