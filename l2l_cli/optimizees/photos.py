"""Photographs for the Neural Art family, offline only: the ones that installed wheels ship (scikit-image,
scikit-learn, matplotlib) or a user's own files, decoded by Pillow (no pickles, nothing executed), and the
content pools cut from them: random square crops at several scales, meta-train / validation / test pools
disjoint by source photograph.

Images are float32 tensors (3, H, W) in [0, 1]; grey photos are repeated over the three channels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from l2l_cli.core.user_files import MiB, decode, regular_file, require, sha256
from l2l_cli.optimizees.base import DataError

# name -> (package, path inside it). Files these wheels always ship (some skimage.data names are fetched on first
# use instead; none of those is here). motorcycle_right is the same scene as motorcycle_left and is left out.
BUILTIN = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "camera": ("skimage", "data/camera.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "coins": ("skimage", "data/coins.png"),
    "moon": ("skimage", "data/moon.png"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "retina": ("skimage", "data/retina.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    # textures and a stained-tissue micrograph: style images
    "ihc": ("skimage", "data/ihc.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "brick": ("skimage", "data/brick.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
}
# foolbox's 20 ImageNet validation photographs (512x512 JPEGs; the name keeps the index and the ImageNet label)
IMAGENET = ("00_243", "01_559", "02_438", "03_990", "04_949", "05_853", "06_609", "07_609", "08_915", "09_455",
            "10_541", "11_630", "12_741", "13_471", "14_129", "15_99", "16_251", "17_22", "18_317", "19_305")
BUILTIN.update({f"imagenet_{n}": ("foolbox", f"data/imagenet_{n}.jpg") for n in IMAGENET})
BUILTIN_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "motorcycle", "rocket", "retina",
                  "grace_hopper", "china", "flower")
# optimizee.content_photos: which built-in photographs the content crops come from
CONTENT_PHOTOS = {"imagenet": BUILTIN_PHOTOS + tuple(f"imagenet_{n}" for n in IMAGENET), "builtin": BUILTIN_PHOTOS}
CONTENT_DESCRIPTIONS = {"imagenet": "foolbox's 20 ImageNet validation photographs and the photographs scikit-image, "
                                    "scikit-learn and matplotlib ship",
                        "builtin": "built-in photographs (scikit-image, scikit-learn, matplotlib)"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "validation", "test")
IMAGE_LIMIT = 256 * MiB  # bytes of one image file, checked before Pillow opens it


def builtin_path(name: str) -> Path:
    """Where a built-in image lies, found without importing its package."""
    package, relative = BUILTIN[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = (" (pip install --no-deps foolbox==3.3.4: only its image files are read; or "
                "optimizee.content_photos=builtin)") if package == "foolbox" else ""
        raise DataError(f"optimizee: the built-in image {name!r} comes from the {package} package, which is not "
                        f"installed{hint}")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise DataError(f"optimizee: {package} is installed but its image {path} is missing")
    return path


FOOLBOX_KINDS = ("imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST")


def foolbox_images(kind: str) -> List[Tuple[Path, int]]:
    """The real sample images foolbox's wheel ships in ``foolbox/data/`` (``<kind>_<index>_<label>.<ext>``: 20
    ImageNet validation JPEGs of 512x512, the first 20 CIFAR-10 test images, ...), in index order with the label the
    file name carries; found without importing foolbox (its dependencies are heavier than the images). [] where it
    is not installed (the Makefile installs it with --no-deps)."""
    if kind not in FOOLBOX_KINDS:
        raise ValueError(f"unknown foolbox image kind {kind!r} (one of {', '.join(FOOLBOX_KINDS)})")
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for path in (Path(spec.submodule_search_locations[0]) / "data").glob(f"{kind}_*"):
        match = re.fullmatch(rf"{kind}_(\d+)_(\d+)\.(png|jpg)", path.name)
        if match and path.is_file():
            found.append((int(match[1]), path, int(match[2])))
    return [(path, label) for _, path, label in sorted(found)]


def _open_image(path: Path, min_side: int, key: str, pixels: bool):
    """(height, width) or, with ``pixels``, the (3, H, W) tensor; one line naming the file (and the key that points
    at it) when it is missing, not a regular file, larger than IMAGE_LIMIT, not an image, or smaller than
    ``min_side`` pixels on a side. Pillow's decompression-bomb limit stays on."""
    regular_file(path, IMAGE_LIMIT, key, DataError)  # before Pillow opens it: /dev/zero or a FIFO never ends

    def parse():
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
            # a DataError passes through decode as it is (it names the file already)
            require(min(height, width) >= min_side, path, f"{width}x{height} pixels, too small: both sides must be "
                    f">= {min_side} (optimizee.size x the smallest scale)", key, DataError)
            if not pixels:
                return height, width
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))

    return decode(path, parse, "an image", key, DataError)


def read_image(path: str | Path, min_side: int, key: str) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1], decoded by Pillow (errors: ``_open_image``)."""
    return _open_image(Path(path), min_side, key, pixels=True)


def image_size(path: str | Path, min_side: int, key: str) -> Tuple[int, int]:
    """(height, width) from the file's header, without decoding its pixels (errors: ``_open_image``)."""
    return _open_image(Path(path), min_side, key, pixels=False)


def resolve_image(name_or_path: str, key: str) -> Tuple[str, Path]:
    """(display name, file) for a built-in image name or a path."""
    if name_or_path in BUILTIN:
        return name_or_path, builtin_path(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise DataError(f"{key}: {name_or_path!r} is neither a file nor a built-in image ({', '.join(BUILTIN)})")
    regular_file(path, IMAGE_LIMIT, key, DataError)  # a directory, device or FIFO: one line, nothing opened
    return path.name, path


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """The largest centred square of ``image``, resized to size x size (antialiased)."""
    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[:, top: top + side, left: left + side].unsqueeze(0)
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def file_sha256(path: Path, key: str | None = None, limit: int = IMAGE_LIMIT) -> str:
    """The first 16 hex digits of the file's SHA-256, read in chunks from a regular file of at most ``limit``."""
    return sha256(path, limit, key, DataError)[:16]


@dataclass
class ContentSource:
    """The photographs content crops come from: built-in names or the files of a directory."""

    names: List[str]
    paths: List[Path]
    description: str
    key: str  # the config key an error about these photos names

    @classmethod
    def from_config(cls, content_dir: str | None, photos: str = "imagenet") -> "ContentSource":
        if content_dir is None:
            names = CONTENT_PHOTOS[photos]
            return cls(list(names), [builtin_path(n) for n in names], CONTENT_DESCRIPTIONS[photos],
                       "optimizee.content_photos")
        root = Path(content_dir).expanduser()
        if not root.is_dir():
            raise DataError(f"optimizee.content_dir: {content_dir} is not a directory")
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return cls([str(p.relative_to(root)) for p in paths], paths, f"image files under {root.resolve()}",
                   "optimizee.content_dir")


def split_photos(source: ContentSource, validation_photos: int, test_photos: int, seed: int) -> Dict[str, List[int]]:
    """Photo indices per split from a seeded permutation: no photograph feeds two splits."""
    need = validation_photos + test_photos + 1
    if len(source.names) < need:
        raise DataError(f"{source.key}: {source.description} holds {len(source.names)} images; "
                        f"validation_photos={validation_photos} + test_photos={test_photos} + at least one for "
                        f"meta-training need {need}")
    order = np.random.default_rng(seed).permutation(len(source.names)).tolist()
    return {"validation": sorted(order[:validation_photos]),
            "test": sorted(order[validation_photos: validation_photos + test_photos]),
            "train": sorted(order[validation_photos + test_photos:])}


def plan_crops(sizes: Dict[int, Tuple[int, int]], count: int, size: int, scales: Sequence[int],
               rng: np.random.Generator) -> list:
    """``count`` crop boxes (photo, top, left, side): for each a photo uniformly (``sizes``: photo -> (height,
    width)), then a scale among those that fit it (a crop of size * scale pixels), then a uniform position."""
    keys, boxes = sorted(sizes), []
    for _ in range(count):
        k = keys[rng.integers(len(keys))]
        height, width = sizes[k]
        fitting = [s for s in scales if size * s <= min(height, width)]
        side = size * fitting[rng.integers(len(fitting))]
        boxes.append((k, int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1)), side))
    return boxes


def cut_crops(load: Callable[[int], torch.Tensor], boxes: list, size: int) -> torch.Tensor:
    """The boxes' pixels, area-averaged down to (len(boxes), 3, size, size); each photo read with ``load`` once and
    only when a crop comes from it (a directory may hold thousands)."""
    crops = torch.empty(len(boxes), 3, size, size)
    for k in sorted({box[0] for box in boxes}):
        image = load(k)
        for i, (_, top, left, side) in ((i, box) for i, box in enumerate(boxes) if box[0] == k):
            window = image[:, top: top + side, left: left + side].unsqueeze(0)
            crops[i] = F.avg_pool2d(window, side // size)[0] if side > size else window[0]
    return crops


class ContentPools:
    """Crops per split, cut on first use from that split's photographs with that split's own seed (so a pool
    does not change with the size of another)."""

    def __init__(self, content_dir: str | None, size: int, scales: Sequence[int], counts: Dict[str, int],
                 validation_photos: int, test_photos: int, split_seed: int, photos: str = "imagenet"):
        self.source = ContentSource.from_config(content_dir, photos)
        self.size, self.scales, self.counts, self.split_seed = size, tuple(scales), counts, split_seed
        self.photos = split_photos(self.source, validation_photos, test_photos, split_seed)
        # the held-out photos' headers now, not when their pool is first cut: a bad file among the test photos
        # would otherwise surface only after meta-training (headers only: a directory may hold thousands)
        min_side = size * min(self.scales)
        self._sizes = {k: image_size(self.source.paths[k], min_side, self.source.key)
                       for split in ("validation", "test") for k in self.photos[split]}
        self._pools: Dict[str, torch.Tensor] = {}
        self.boxes: Dict[str, list] = {}  # per split, each crop's (photo index, top, left, side)
        self._fingerprints: Dict[str, str] = {}

    def pool(self, split: str) -> torch.Tensor:
        if split not in self._pools:
            key = self.source.key
            min_side = self.size * min(self.scales)
            sizes = {k: self._sizes[k] if k in self._sizes else image_size(self.source.paths[k], min_side, key)
                     for k in self.photos[split]}
            rng = np.random.default_rng([self.split_seed, SPLITS.index(split)])
            boxes = plan_crops(sizes, self.counts[split], self.size, self.scales, rng)
            crops = cut_crops(lambda k: read_image(self.source.paths[k], min_side, key), boxes, self.size)
            self._pools[split], self.boxes[split] = crops, boxes
            digest = hashlib.sha256(repr([(self.source.names[k], *box) for k, *box in boxes]).encode())
            digest.update(crops.numpy().tobytes())
            self._fingerprints[split] = digest.hexdigest()[:16]
        return self._pools[split]

    def record(self) -> dict:
        """Sources, sizes and fingerprints (of the crops' boxes and pixels) of the pools cut so far."""
        return {"source": self.source.description, "split_seed": self.split_seed, "size": self.size,
                "scales": list(self.scales),
                "photos": {s: [self.source.names[k] for k in self.photos[s]] for s in SPLITS},
                "crops": {s: self.counts[s] for s in SPLITS},
                "crops_sha256": dict(self._fingerprints)}
