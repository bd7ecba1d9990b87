"""The paper's Neural Art family: the parameters are an image, the loss is Gatys et al.'s style transfer.

f(theta) = alpha * content(c, x) + beta * style(s, x) + gamma * TV(x), with x = sigmoid(theta) the image in
[0, 1] (a documented parameterisation: every pixel stays in range without clamping, and every coordinate keeps a
gradient), c a content photograph crop (one per function), s the family's style image (or, with train_styles, one
of several for the meta-training functions). All functions of a batch go through the CNN as ONE
batched forward and backward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.core.schemas import OptimizeeConfig, Suggested, as_dataclass, check, check_at_least_one, check_choice
from l2l_cli.optimizees.base import DataError
from l2l_cli.optimizees.photos import CONTENT_PHOTOS, ContentPools, file_sha256, read_image, resolve_image, square
from l2l_cli.optimizees.style_features import (
    BLOCK_STRIDE,
    NUM_BLOCKS,
    content_loss,
    feature_extractor,
    gram,
    style_loss,
    total_variation,
    weights_file,
)

INITS = ("content", "noise")
PIXEL_MARGIN = 0.02  # content init: pixels clamped to [0.02, 0.98] before the logit, so none starts saturated


@dataclass
class ContentPoolsConfig:
    """Content crops per split, cut from photographs that never feed two splits."""

    train: int = 1800
    validation: int = 20
    test: int = 100
    validation_photos: int = 4  # photographs reserved for the validation crops
    test_photos: int = 8  # and for the test crops; the rest feed meta-training
    # crop sides, in multiples of optimizee.size, area-averaged down to size x size
    scales: List[int] = field(default_factory=lambda: [2, 4, 8])
    split_seed: int = 0


@dataclass
class NeuralArtConfig(OptimizeeConfig):
    """Style transfer on size x size images (module docstring)."""

    name: str = "neural_art"
    size: int = 64  # image side in pixels; a multiple of the deepest layer's stride
    style: str = "ihc"  # a built-in image name (photos.BUILTIN) or a path to an image file
    # more styles (names or paths) for the meta-training functions, each of which draws one of [style, *train_styles];
    # validation and test functions always take `style`. Empty: every function takes `style`
    train_styles: List[str] = field(default_factory=list)
    content_dir: Optional[str] = None  # null: the built-in photographs (content_photos); else a directory of images
    # imagenet: foolbox's 20 ImageNet validation photographs and the 12 that scikit-image, scikit-learn and
    # matplotlib ship | builtin: those 12 only (the content of the results measured before foolbox's photos)
    content_photos: str = "imagenet"
    content: ContentPoolsConfig = field(default_factory=ContentPoolsConfig)
    content_layer: int = 4  # EfficientNet-Lite0 block (0..15) whose feature maps the content loss compares
    style_layers: List[int] = field(default_factory=lambda: [0, 2, 4])  # blocks whose Gram matrices style compares
    # the terms are means over feature entries and pixels. gamma: with 100 (the weight before issue 30) tuned
    # Adam's images at step 100, and the objective's minimiser after 600 steps, are covered in per-pixel colour
    # noise; 5000 gives the content painted in the style at both (docs/experiments/neural_art.md, the objective)
    alpha: float = 1.0  # content weight
    beta: float = 1.0  # style weight
    gamma: float = 5000.0  # total-variation weight
    init: str = "content"  # content (theta_0 = logit of the content crop) | noise (theta_0 ~ N(0, 1))
    batch_size: int = 4
    suggested: Suggested = field(default_factory=lambda: Suggested(
        iterations=200, val_every=20, val_functions=20, tune_functions=20, test_functions=100))

    def check_fields(self) -> None:
        self.content = as_dataclass(ContentPoolsConfig, self.content)
        check(self.size >= 1, "optimizee.size", f"must be >= 1, got {self.size}")
        layers = [self.content_layer, *self.style_layers]
        for key, values in (("content_layer", [self.content_layer]), ("style_layers", self.style_layers)):
            for value in values:
                check(0 <= value < NUM_BLOCKS, f"optimizee.{key}",
                      f"EfficientNet-Lite0 blocks are 0..{NUM_BLOCKS - 1}, got {value}")
        check(len(self.style_layers) > 0, "optimizee.style_layers", "must name at least one block")
        check(len(set(self.train_styles)) == len(self.train_styles) and self.style not in self.train_styles,
              "optimizee.train_styles", f"must name styles other than optimizee.style ({self.style}) once each, "
              f"got {list(self.train_styles)}")
        stride = BLOCK_STRIDE[max(layers)]
        check(self.size % stride == 0, "optimizee.size",
              f"must be a multiple of {stride} (the stride of block {max(layers)}), got {self.size}")
        for key in ("alpha", "beta", "gamma"):
            check(getattr(self, key) >= 0, f"optimizee.{key}", f"must be >= 0, got {getattr(self, key)}")
        check_choice(self.init, "optimizee.init", INITS)
        check_choice(self.content_photos, "optimizee.content_photos", tuple(CONTENT_PHOTOS))
        check_at_least_one(self.content, "optimizee.content.", ("train", "validation", "test", "validation_photos",
                                                                "test_photos"))
        check(len(self.content.scales) > 0 and all(s >= 1 for s in self.content.scales), "optimizee.content.scales",
              f"must be a non-empty list of integers >= 1, got {self.content.scales}")


@functools.lru_cache(maxsize=4)
def cached_pools(content_dir, size: int, scales: tuple, counts: tuple, validation_photos: int, test_photos: int,
                 split_seed: int, photos: str) -> ContentPools:
    """The content pools, cut once per process for each data config."""
    return ContentPools(content_dir, size, scales, dict(zip(("train", "validation", "test"), counts, strict=True)),
                        validation_photos, test_photos, split_seed, photos)


@dataclass
class NeuralArtProblems:
    content: torch.Tensor  # (n, 3, S, S) content crops in [0, 1]
    content_target: torch.Tensor  # (n, C, h, w) their features at the content layer
    theta0: torch.Tensor  # (n, 3 S S)
    style_grams: List[torch.Tensor]  # one (n, C, C) per style layer: each function's style's Gram matrices
    style: torch.Tensor  # (n, 3, S, S) each function's style image, for pictures

    def __len__(self) -> int:
        return self.theta0.shape[0]


class NeuralArtFamily:
    """Module docstring. Problems differ by their content crop (and theta_0 for init=noise)."""

    stationary = True  # the same function at every step

    def __init__(self, cfg: NeuralArtConfig):
        self.size = cfg.size
        self.num_params = 3 * cfg.size * cfg.size
        self.content_layer, self.style_layers = cfg.content_layer, list(cfg.style_layers)
        self.layers = tuple(sorted({cfg.content_layer, *cfg.style_layers}))
        self.weights = (cfg.alpha, cfg.beta, cfg.gamma)
        self.init = cfg.init
        c = cfg.content
        self.pools = cached_pools(cfg.content_dir, cfg.size, tuple(c.scales), (c.train, c.validation, c.test),
                                  c.validation_photos, c.test_photos, c.split_seed, cfg.content_photos)
        styles = [self._style(name, "optimizee.style" if not i else f"optimizee.train_styles[{i - 1}]", cfg.size)
                  for i, name in enumerate([cfg.style, *cfg.train_styles])]
        self.style_record = styles[0][0]
        if cfg.train_styles:
            self.style_record = {**self.style_record, "train_styles": [record for record, _ in styles[1:]]}
        self.style_images = torch.stack([image for _, image in styles])  # (k, 3, S, S); 0: `style`
        with torch.no_grad():
            features = self.extractor(torch.device("cpu"))(self.style_images)
        self.style_grams = [gram(features[layer]) for layer in self.style_layers]  # (k, C, C) each

    @staticmethod
    def _style(name_or_path: str, key: str, size: int) -> tuple:
        """(record, image (3, S, S)) of one style."""
        name, path = resolve_image(name_or_path, key)
        return ({"style": name, "style_file": str(path), "style_sha256": file_sha256(path, key)},
                square(read_image(path, size, key), size))

    def _styles_of(self, n: int, split: str, gen: torch.Generator) -> torch.Tensor:
        """Each function's style index: meta-training functions draw theirs (only where there is a choice, so a
        family of one style draws the same random numbers as before train_styles existed); validation and test
        functions take `style`, so baselines are tuned on the style they are tested on."""
        if split == "train" and len(self.style_images) > 1:
            return torch.randint(len(self.style_images), (n,), generator=gen)
        return torch.zeros(n, dtype=torch.long)

    def extractor(self, device, dtype=torch.float32):
        return feature_extractor(self.layers, str(device), dtype)

    def sample(self, n: int, num_steps: int, gen: torch.Generator, device="cpu", split: str = "train"):
        """Meta-training draws crops from its pool at random; validation and test take the first n crops of theirs
        (the fixed held-out sets)."""
        pool = self.pools.pool(split)
        if split == "train":
            idx = torch.randint(len(pool), (n,), generator=gen)
        elif n > len(pool):
            raise DataError(f"optimizee.content.{split}: the {split} pool holds {len(pool)} crops, {n} {split} "
                            "functions were asked for (eval.num_functions, eval.val_functions, train.val_functions)")
        else:
            idx = torch.arange(n)
        content = pool[idx].to(device)
        if self.init == "content":
            theta0 = torch.logit(content.clamp(PIXEL_MARGIN, 1 - PIXEL_MARGIN)).reshape(n, -1)
        else:
            theta0 = torch.randn(n, self.num_params, generator=gen).to(device)
        with torch.no_grad():
            target = self.extractor(device)(content)[self.content_layer]
        styles = self._styles_of(n, split, gen)
        return NeuralArtProblems(content, target, theta0, [g[styles].to(device) for g in self.style_grams],
                                 self.style_images[styles].to(device))

    def data_record(self) -> dict:
        return {**self.pools.record(), **self.style_record,
                "features": {"network": "EfficientNet-Lite0, ImageNet weights", "weights_sha256":
                             file_sha256(weights_file()), "content_layer": self.content_layer,
                             "style_layers": self.style_layers}}

    def initial_params(self, problem: NeuralArtProblems) -> torch.Tensor:
        return problem.theta0.clone()

    def select(self, problem: NeuralArtProblems, start: int, stop: int) -> NeuralArtProblems:
        return NeuralArtProblems(problem.content[start:stop], problem.content_target[start:stop],
                                 problem.theta0[start:stop], [g[start:stop] for g in problem.style_grams],
                                 problem.style[start:stop])

    def repeat(self, problem: NeuralArtProblems, times: int) -> NeuralArtProblems:
        return NeuralArtProblems(problem.content.repeat(times, 1, 1, 1), problem.content_target.repeat(times, 1, 1, 1),
                                 problem.theta0.repeat(times, 1), [g.repeat(times, 1, 1) for g in problem.style_grams],
                                 problem.style.repeat(times, 1, 1, 1))

    def images(self, theta: torch.Tensor) -> torch.Tensor:
        """theta (n, 3 S S) -> the images (n, 3, S, S) in [0, 1]."""
        return torch.sigmoid(theta).view(-1, 3, self.size, self.size)

    def loss_terms(self, problem: NeuralArtProblems, theta: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Each function's content, style and total-variation terms, unweighted, shape (n,) each."""
        x = self.images(theta)
        features = self.extractor(theta.device, theta.dtype)(x)
        return {"content": content_loss(features[self.content_layer], problem.content_target),
                "style": style_loss([gram(features[layer]) for layer in self.style_layers], problem.style_grams),
                "tv": total_variation(x)}

    def loss(self, problem: NeuralArtProblems, theta: torch.Tensor, step: int) -> torch.Tensor:
        terms = self.loss_terms(problem, theta)
        alpha, beta, gamma = self.weights
        return alpha * terms["content"] + beta * terms["style"] + gamma * terms["tv"]

    def expected_loss(self, problem: NeuralArtProblems, theta: torch.Tensor) -> torch.Tensor:
        return self.loss(problem, theta, 0)  # deterministic

    def analytic_loss_and_grad(self, problem, theta, step):
        return None  # autograd through the CNN (loss_and_grad)

    def pictures(self, problem: NeuralArtProblems, results: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Columns of the evaluation's image grid, each (n, 3, S, S): content, each optimizer's final image (theta
        in ``results``), style."""
        return {"content": problem.content, **{name: self.images(theta) for name, theta in results.items()},
                "style": problem.style}


OPTIMIZEES.register("neural_art", NeuralArtConfig, NeuralArtFamily)
