"""The paper's CIFAR-10 optimizee: a small conv net with batch normalisation, trained by cross-entropy on a fresh
minibatch every step; by default on the embedded digits (28x28x1), on CIFAR-10 where its files are on disk.

conv (16 channels, 5x5, SAME) -> batch norm -> ReLU -> 2x2 max-pool, three times; then fully connected 32 ->
batch norm -> ReLU; then a linear layer to the classes in use (the order of the original code's Sonnet ConvNet2D
and MLP). Batch norm always normalises with the minibatch's own statistics (training mode: every step of an
optimizee is a training step). n optimizees run as ONE computation: their channels are stacked and every
convolution is grouped by optimizee, every fully connected layer is a batched matmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F

from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.core.schemas import OptimizeeConfig, Suggested, as_dataclass, check
from l2l_cli.optimizees.classifier import ClassifierProblems, MinibatchClassifier
from l2l_cli.optimizees.images import ImageDataConfig, resolve_data, resolved_pools


@dataclass
class ConvNetConfig(OptimizeeConfig):
    """The conv net of the paper's CIFAR experiment; the class count follows optimizee.data.labels."""

    name: str = "convnet"
    channels: List[int] = field(default_factory=lambda: [16, 16, 16])  # one conv layer per entry
    kernel: int = 5
    hidden: List[int] = field(default_factory=lambda: [32])  # fully connected layers before the output layer
    batch_norm: bool = True
    bn_eps: float = 1e-3  # Sonnet's BatchNorm default, as in the original code
    minibatch: int = 128
    batch_size: int = 1
    init_std: float = 0.01  # weights and biases ~ N(0, init_std^2) as in the original code; BN scale 1, shift 0
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    # the MNIST MLP's recipe (sum log f, cosine meta lr, weight average); 4 tuning functions rather than 8: the
    # baselines' tuning is most of the evaluation's time (docs/experiments/convnet.md)
    suggested: Suggested = field(default_factory=lambda: Suggested(
        iterations=200, val_every=25, val_functions=8, tune_functions=4, test_functions=32, weighting="log",
        meta_lr_schedule="cosine", ema_decay=0.95))

    def check_fields(self) -> None:
        self.data = as_dataclass(ImageDataConfig, self.data)
        self.data.check()
        self.channels, self.hidden = list(self.channels), list(self.hidden)
        check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "optimizee.channels",
              f"must list at least one channel count, each >= 1, got {self.channels}")
        check(all(h >= 1 for h in self.hidden), "optimizee.hidden", f"every entry must be >= 1, got {self.hidden}")
        check(self.kernel >= 1 and self.kernel % 2 == 1, "optimizee.kernel",
              f"must be an odd number >= 1 (SAME padding), got {self.kernel}")
        check(self.bn_eps > 0, "optimizee.bn_eps", f"must be > 0, got {self.bn_eps}")
        check(self.init_std >= 0, "optimizee.init_std", f"must be >= 0, got {self.init_std}")
        check(self.minibatch >= (2 if self.batch_norm else 1), "optimizee.minibatch",
              f"must be >= 2 with batch norm (it normalises over the minibatch), got {self.minibatch}")


class ConvNetFamily(MinibatchClassifier):
    """Cross-entropy of the conv net on a minibatch of a fixed image pool; theta (n, P) holds the named tensors
    of ``tensors`` in order, each flattened as torch.nn's layer of that name stores it."""

    def __init__(self, cfg: ConvNetConfig):
        data, choice = resolve_data(cfg.data)
        super().__init__(resolved_pools(data, choice), cfg.minibatch, data.images_per_function)
        self.cfg = cfg
        self.classes = len(self.pools.record["labels"])
        self.image_shape = tuple(self.pools.train[0].shape[1:])
        channels, height, width = self.image_shape
        tensors = []
        for i, out in enumerate(cfg.channels, start=1):
            tensors += [(f"conv{i}.weight", (out, channels, cfg.kernel, cfg.kernel)), (f"conv{i}.bias", (out,))]
            if cfg.batch_norm:
                # bn{i}, not conv{i}_bn: the rule conv*.weight would take its scale
                tensors += [(f"bn{i}.weight", (out,)), (f"bn{i}.bias", (out,))]
            channels, height, width = out, height // 2, width // 2
        check(height >= 1 and width >= 1, "optimizee.channels",
              f"{len(cfg.channels)} 2x2 poolings leave nothing of {self.image_shape[1]}x{self.image_shape[2]} images")
        features = channels * height * width
        for j, units in enumerate(cfg.hidden, start=1):
            tensors += [(f"fc{j}.weight", (units, features)), (f"fc{j}.bias", (units,))]
            if cfg.batch_norm:
                tensors += [(f"fc{j}_bn.weight", (units,)), (f"fc{j}_bn.bias", (units,))]
            features = units
        tensors += [("out.weight", (self.classes, features)), ("out.bias", (self.classes,))]
        self.tensors = tensors
        self.num_params = sum(math.prod(shape) for _, shape in tensors)
        self._spans, offset = {}, 0  # name -> (start, stop) of its columns: fixed, so computed once, not per loss
        for name, shape in tensors:
            self._spans[name] = (offset, offset + math.prod(shape))
            offset += math.prod(shape)

    # functions per evaluation chunk: oneDNN's grouped convolutions cost ~13-16 ms per function-step at 2-4 groups
    # and ~22-30 ms at 6-8 on 2 cores (docs/performance.md#evaluation-chunks)
    functions_per_chunk = 4

    def expected_chunk(self, n: int) -> int:
        return self.minibatch  # batch norm's statistics over minibatch-sized groups, as in training

    def initial_theta(self, n: int, gen: torch.Generator) -> torch.Tensor:
        theta = torch.randn(n, self.num_params, generator=gen) * self.cfg.init_std
        for name, (start, stop) in self.spans().items():
            if name.startswith("bn") or "_bn." in name:
                theta[:, start:stop] = 1.0 if name.endswith(".weight") else 0.0
        return theta

    def spans(self) -> dict:
        """name -> (start, stop) of each tensor in theta's columns."""
        return self._spans

    def unflatten(self, theta: torch.Tensor) -> dict:
        """name -> view of theta (n, P) as (n, *shape)."""
        n = theta.shape[0]
        return {name: theta[:, start:stop].view(n, *shape)
                for (name, shape), (start, stop) in zip(self.tensors, self.spans().values(), strict=True)}

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x (n, M, C, H, W) float -> logits (n, M, classes), function i with its own parameters theta[i]."""
        n, m = x.shape[:2]
        p = self.unflatten(theta)
        h = x.transpose(0, 1).reshape(m, n * x.shape[2], *x.shape[3:])  # (M, n*C, H, W): channels by function
        # channels-last: oneDNN's grouped convolutions run ~1.5x faster on it (docs/experiments/convnet.md)
        h = h.contiguous(memory_format=torch.channels_last)
        for i in range(1, len(self.cfg.channels) + 1):
            w = p[f"conv{i}.weight"]
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), p[f"conv{i}.bias"].reshape(-1),
                         padding=self.cfg.kernel // 2, groups=n)
            if self.cfg.batch_norm:
                h = F.batch_norm(h, None, None, p[f"bn{i}.weight"].reshape(-1), p[f"bn{i}.bias"].reshape(-1),
                                 training=True, eps=self.cfg.bn_eps)
            h = F.max_pool2d(torch.relu(h), 2)
        h = h.reshape(m, n, -1).transpose(0, 1)  # (n, M, C*h*w), each image flattened as torch.flatten does
        for j in range(1, len(self.cfg.hidden) + 1):
            h = torch.baddbmm(p[f"fc{j}.bias"].unsqueeze(1), h, p[f"fc{j}.weight"].transpose(1, 2))
            if self.cfg.batch_norm:
                units = h.shape[-1]
                h = F.batch_norm(h.transpose(0, 1).reshape(m, n * units), None, None,
                                 p[f"fc{j}_bn.weight"].reshape(-1), p[f"fc{j}_bn.bias"].reshape(-1), training=True,
                                 eps=self.cfg.bn_eps).view(m, n, units).transpose(0, 1)
            h = torch.relu(h)
        return torch.baddbmm(p["out.bias"].unsqueeze(1), h, p["out.weight"].transpose(1, 2))

    def example_losses(self, problem: ClassifierProblems, theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        x = problem.images[idx].to(theta.dtype) / 255.0
        logits = self.logits(theta, x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), problem.labels[idx].reshape(-1),
                               reduction="none").view(idx.shape)


OPTIMIZEES.register("convnet", ConvNetConfig, ConvNetFamily, tiny={
    "channels": [4, 4], "hidden": [8], "minibatch": 16,
    "data": ImageDataConfig(validation=200, test=200, images_per_function=200)})
