"""Readers of user data files (IDX digits, CIFAR-10 batches, images, style files, custom targets) are bounded and
total: any bytes give a valid result or one DataError line naming the file, never another exception, and a file's
header cannot make a reader allocate or read more than it promises. Property tests feed each reader mutations of a
valid small file and random bytes (``L2L_FUZZ_EXAMPLES`` examples per reader, default 150); regression tests pin the
cases found or reported (int64-wrapping IDX dims, a gzip bomb, /dev/zero and FIFOs, a loss without gradient, a bad
photo among the test photos, the 1x1 style image)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import signal
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from l2l_cli.core.schemas import ConfigError
from l2l_cli.core.user_files import UserFileError, product
from l2l_cli.optimizees import build_family, digits
from l2l_cli.optimizees.base import DataError
from l2l_cli.optimizees.custom import CustomConfig
from l2l_cli.optimizees.digits import IDX_CLASSES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, load_idx_dir, read_idx
from l2l_cli.optimizees.images import CIFAR_CLASSES, read_cifar_batch
from l2l_cli.optimizees.neural_art import NeuralArtConfig, NeuralArtFamily
from l2l_cli.optimizees.photos import ContentSource, file_sha256, image_size, read_image, resolve_image, split_photos

EXAMPLES = int(os.environ.get("L2L_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("L2L_FUZZ_EXAMPLES"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
IMAGES_STEM, LABELS_STEM = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
U32 = 2**32 - 1


# ---------------------------------------------------------------------------------------------------- helpers


def one_line_naming(exc: BaseException, *paths) -> None:
    """The reader's contract for a bad file: a DataError (a UserFileError) of one line naming the file."""
    message = str(exc)
    assert isinstance(exc, UserFileError), f"{type(exc).__name__}: {message}"
    assert "\n" not in message and message.strip(), message
    assert any(str(p) in message for p in paths), message


def idx_bytes(magic: int, dims, payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims) + payload


def valid_images(n=3, rows=4, cols=5, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)
    return idx_bytes(IDX_IMAGES_MAGIC, (n, rows, cols), pixels.tobytes())


def valid_labels(n=3, seed=0) -> bytes:
    return idx_bytes(IDX_LABELS_MAGIC, (n,), np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8).tobytes())


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def apply(data: bytes, ops) -> bytes:
    """Truncations, bit flips, insertions, deletions, overwritten header words, at positions taken modulo the
    length (so every drawn position lands somewhere)."""
    out = bytearray(data)
    for op, pos, arg in ops:
        at = pos % (len(out) + 1)
        if op == "truncate":
            del out[at:]
        elif op == "flip" and out:
            out[at % len(out)] ^= 1 << (arg % 8)
        elif op == "insert":
            out[at:at] = arg
        elif op == "delete":
            del out[at: at + len(arg) + 1]
        elif op == "word":  # a 4-byte big-endian word: an IDX magic or dimension, huge ones included
            start = 4 * (pos % 4)
            out[start: start + 4] = int(arg).to_bytes(4, "big")
    return bytes(out)


POSITIONS = st.one_of(st.integers(0, 24), st.integers(0, 2**16))  # the header more often than the payload
WORDS = st.one_of(st.sampled_from([0, 1, 2, 255, 2**31 - 1, 2**31, U32, 0x803, 0x801, 0x80B]), st.integers(0, U32))
OPS = st.lists(st.one_of(
    st.tuples(st.just("truncate"), POSITIONS, st.none()),
    st.tuples(st.just("flip"), POSITIONS, st.integers(0, 7)),
    st.tuples(st.just("insert"), POSITIONS, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), POSITIONS, st.binary(max_size=8)),
    st.tuples(st.just("word"), st.integers(0, 3), WORDS)), min_size=1, max_size=4)


def mutations(valid: bytes):
    """Bytes near a valid file, or random bytes."""
    return st.one_of(OPS.map(lambda ops: apply(valid, ops)), st.binary(max_size=96))


@contextlib.contextmanager
def time_limit(seconds: float):
    """A reader that blocks (opening a FIFO) or never ends (/dev/zero) fails the test instead of hanging it."""
    def expire(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def fifo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fifo") / "pipe.png"
    os.mkfifo(path)
    return path


def specials(fifo_path: Path) -> list[Path]:
    """Paths that exist but are no regular file: reading them blocks (FIFO) or never ends (/dev/zero)."""
    return [p for p in (Path("/dev/zero"), fifo_path) if p.exists()]


# ---------------------------------------------------------------------------------------------------- IDX


def check_idx(array: np.ndarray, ndim: int) -> None:
    assert array.dtype == np.uint8 and array.ndim == ndim and min(array.shape) >= 1


def test_valid_idx_files_read_back_exactly(tmp_path):
    for suffix in ("", ".gz"):
        images = write(tmp_path / f"{IMAGES_STEM}{suffix}", valid_images())
        expected = np.frombuffer(valid_images(), np.uint8, offset=16).reshape(3, 4, 5)
        np.testing.assert_array_equal(read_idx(images, IDX_IMAGES_MAGIC), expected)
        labels = write(tmp_path / f"{LABELS_STEM}{suffix}", valid_labels())
        expected = np.frombuffer(valid_labels(), np.uint8, offset=8)
        np.testing.assert_array_equal(read_idx(labels, IDX_LABELS_MAGIC), expected)
        images.unlink()
        labels.unlink()


@FUZZ
@given(labels=st.booleans(), gz=st.booleans(), data=st.data())
def test_read_idx_is_total_on_mutated_and_random_bytes(tmp_path_factory, labels, gz, data):
    magic, ndim = (IDX_LABELS_MAGIC, 1) if labels else (IDX_IMAGES_MAGIC, 3)
    raw = data.draw(mutations(valid_labels() if labels else valid_images()))
    path = write(tmp_path_factory.mktemp("idx") / ("file.gz" if gz else "file"), raw)
    try:
        check_idx(read_idx(path, magic), ndim)
    except DataError as exc:
        one_line_naming(exc, path)


@FUZZ
@given(data=mutations(b""), cut=st.integers(0, 400))
def test_read_idx_is_total_on_corrupt_gzip_streams(tmp_path_factory, data, cut):
    """The compressed bytes themselves broken: bad CRC, cut streams, flipped deflate bits."""
    raw = gzip.compress(valid_images(n=4, rows=6, cols=6), mtime=0)
    raw = apply(raw, [("flip", cut, cut)]) if data == b"" else raw[:cut] + data + raw[cut:]
    path = tmp_path_factory.mktemp("gz") / "file.gz"
    path.write_bytes(raw)
    try:
        check_idx(read_idx(path, IDX_IMAGES_MAGIC), 3)
    except DataError as exc:
        one_line_naming(exc, path)


@FUZZ
@given(which=st.sampled_from(["images", "labels"]), gz=st.booleans(), data=st.data())
def test_load_idx_dir_is_total_and_range_checked(tmp_path_factory, which, gz, data):
    """One of the pair mutated: the pair loads as float pixels in [0, 1] and labels among the 10 classes, or one
    line naming a file."""
    root = tmp_path_factory.mktemp("dir")
    suffix = ".gz" if gz else ""
    images, labels = valid_images(), valid_labels()
    if which == "images":
        images = data.draw(mutations(images))
    else:
        labels = data.draw(mutations(labels))
    write(root / f"{IMAGES_STEM}{suffix}", images)
    write(root / f"{LABELS_STEM}{suffix}", labels)
    try:
        x, y = load_idx_dir(root)["train"]
    except DataError as exc:
        one_line_naming(exc, root / f"{IMAGES_STEM}{suffix}", root / f"{LABELS_STEM}{suffix}")
        return
    assert x.dtype == np.float32 and x.ndim == 2 and len(x) == len(y) >= 1 and 0 <= x.min() <= x.max() <= 1
    assert y.dtype == np.int64 and 0 <= y.min() and y.max() < IDX_CLASSES


def test_idx_dims_whose_product_wraps_int64_print_the_true_size(tmp_path):
    """2^31 x 2^31 x 4 is 2^64: 0 in int64, so an np.prod check of an empty payload passed."""
    dims = (2**31, 2**31, 4)
    assert int(np.prod(np.array(dims, dtype=np.int64))) == 0  # what the old check computed
    path = write(tmp_path / IMAGES_STEM, idx_bytes(IDX_IMAGES_MAGIC, dims, b""))
    with pytest.raises(DataError, match=f"2147483648 x 2147483648 x 4 = {2**64} bytes, more than the 2 GiB") as err:
        read_idx(path, IDX_IMAGES_MAGIC)
    one_line_naming(err.value, path)
    dims = (U32, U32, U32)
    path = write(tmp_path / f"{IMAGES_STEM}.gz", idx_bytes(IDX_IMAGES_MAGIC, dims, b"\0" * 64))
    with pytest.raises(DataError, match=f"= {product(dims)} bytes") as err:
        read_idx(path, IDX_IMAGES_MAGIC)
    one_line_naming(err.value, path)


def test_idx_with_no_images_or_an_empty_side_is_one_line(tmp_path):
    for dims in ((0, 28, 28), (5, 0, 28)):
        path = write(tmp_path / IMAGES_STEM, idx_bytes(IDX_IMAGES_MAGIC, dims, b""))
        with pytest.raises(DataError, match=r"no data \(every dimension must be >= 1\)") as err:
            read_idx(path, IDX_IMAGES_MAGIC)
        one_line_naming(err.value, path)


def test_a_label_outside_the_ten_classes_fails_at_load_time(tmp_path):
    write(tmp_path / IMAGES_STEM, valid_images())
    labels = write(tmp_path / LABELS_STEM, idx_bytes(IDX_LABELS_MAGIC, (3,), bytes([1, 255, 2])))
    with pytest.raises(DataError, match=r"holds label 255; MNIST and Fashion-MNIST labels are the classes 0\.\.9"):
        load_idx_dir(tmp_path)
    with pytest.raises(DataError) as err:
        load_idx_dir(tmp_path)
    one_line_naming(err.value, labels)


def test_t10k_images_of_another_size_than_the_training_images_fail(tmp_path):
    write(tmp_path / IMAGES_STEM, valid_images())
    write(tmp_path / LABELS_STEM, valid_labels())
    write(tmp_path / "t10k-images-idx3-ubyte", valid_images(rows=5, cols=4))
    write(tmp_path / "t10k-labels-idx1-ubyte", valid_labels())
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: images of 5 x 4 pixels, the training file's "
                                        r"are 4 x 5"):
        load_idx_dir(tmp_path)


class CountingStream:
    """A stream that counts the bytes its reader took from it."""

    def __init__(self, inner):
        self.inner, self.taken = inner, 0

    def read(self, size=-1):
        data = self.inner.read(size)
        self.taken += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.inner.close()


def gzip_bomb(path: Path, header: bytes, inflated: int) -> Path:
    """A .gz of ``header`` then ``inflated`` zero bytes, written without holding them in memory."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip container
    zeros = bytes(2**20)
    with open(path, "wb") as out:
        out.write(squeeze.compress(header))
        for _ in range(inflated // len(zeros)):
            out.write(squeeze.compress(zeros))
        out.write(squeeze.flush())
    return path


def test_a_gzip_bomb_is_refused_after_what_its_header_promises(tmp_path, monkeypatch):
    """300 images of 28 x 28 promised, 200 MB inflated: refused having taken the promise plus one byte, with a
    small peak of traced memory (reading the whole stream, as the old reader did, takes 200 MB)."""
    header = idx_bytes(IDX_IMAGES_MAGIC, (300, 28, 28), b"")
    promise = len(header) + 300 * 28 * 28
    path = gzip_bomb(tmp_path / f"{IMAGES_STEM}.gz", header, 200 * 2**20)
    assert path.stat().st_size < 2**20
    streams = []

    def counted(*args, **kwargs):
        streams.append(CountingStream(digits_open_stream(*args, **kwargs)))
        return streams[-1]

    digits_open_stream = digits.open_stream
    monkeypatch.setattr(digits, "open_stream", counted)
    start = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="holds more bytes than its header promises") as err:
            read_idx(path, IDX_IMAGES_MAGIC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line_naming(err.value, path)
    assert streams[0].taken == promise + 1
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB traced"
    assert time.perf_counter() - start < 5


def test_an_idx_header_promising_gigabytes_reads_only_what_is_there(tmp_path):
    """A payload just under the limit promised by a 20-byte file: refused without allocating the promise."""
    dims = (2**10, 2**10, 2**11 - 1)  # 2 GiB - 1 MiB
    path = write(tmp_path / f"{IMAGES_STEM}.gz", idx_bytes(IDX_IMAGES_MAGIC, dims, b"\1" * 4))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"ends after 4 of the {product(dims)} bytes of data its header promises"):
            read_idx(path, IDX_IMAGES_MAGIC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB traced"


def test_devices_fifos_and_directories_as_idx_files_are_one_line(tmp_path, fifo):
    for path in [*specials(fifo), tmp_path]:
        with time_limit(5), pytest.raises(DataError) as err:
            read_idx(path, IDX_IMAGES_MAGIC)
        one_line_naming(err.value, path)
    os.symlink("/dev/zero", tmp_path / IMAGES_STEM)
    write(tmp_path / LABELS_STEM, valid_labels())
    with time_limit(5), pytest.raises(DataError, match="is not a regular file") as err:
        load_idx_dir(tmp_path)
    one_line_naming(err.value, tmp_path / IMAGES_STEM)


# ---------------------------------------------------------------------------------------------------- CIFAR


def cifar_pickle(data, labels, **extra) -> bytes:
    """A batch pickled as CIFAR-10's python files are (protocol 2, bytes keys)."""
    return pickle.dumps({b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * len(labels), **extra}, protocol=2)


VALID_CIFAR = cifar_pickle(np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072), [3, 9])


def check_cifar(result) -> None:
    x, y = result
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and len(x) == len(y) >= 1
    assert y.dtype == np.int64 and 0 <= y.min() and y.max() < CIFAR_CLASSES


def test_a_valid_cifar_batch_reads_back(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(VALID_CIFAR)
    x, y = read_cifar_batch(path)
    check_cifar((x, y))
    assert y.tolist() == [3, 9] and x.reshape(2, -1)[1, 5] == (3072 + 5) % 256


STRUCTURES = st.fixed_dictionaries({
    "rows": st.integers(0, 3), "cols": st.sampled_from([3072, 3071, 1024]),
    "dtype": st.sampled_from([np.uint8, np.int16, np.float32, object]),
    "labels": st.lists(st.one_of(st.integers(-2, 12), st.booleans(), st.floats(0, 9), st.binary(max_size=2)),
                       max_size=4),
    "layout": st.sampled_from(["dict", "list", "fortran", "3d"])})


def structured_cifar(spec) -> bytes:
    """A well-formed pickle whose contents may be wrong: shapes, dtypes, label values and types."""
    data = np.zeros((spec["rows"], spec["cols"]), dtype=spec["dtype"])
    shaped = {"fortran": np.asfortranarray(data), "3d": data.reshape(spec["rows"], 1, spec["cols"])}
    data = shaped.get(spec["layout"], data)
    if spec["layout"] == "list":
        return pickle.dumps([data, spec["labels"]], protocol=2)
    return cifar_pickle(data, spec["labels"])


@FUZZ
@given(data=st.one_of(mutations(VALID_CIFAR), STRUCTURES.map(structured_cifar),
                      st.tuples(STRUCTURES.map(structured_cifar), OPS).map(lambda t: apply(*t))))
def test_read_cifar_batch_is_total(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cifar") / "data_batch_1"
    path.write_bytes(data)
    try:
        check_cifar(read_cifar_batch(path))
    except DataError as exc:
        one_line_naming(exc, path)


class Allocates:
    """Pickles as a direct call of numpy.ndarray with a shape of the file's choosing."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        return np.ndarray, (self.shape, np.dtype("u1"))


def test_a_pickle_cannot_make_the_cifar_reader_allocate(tmp_path):
    """Calling numpy.ndarray or _reconstruct with a huge shape (a few bytes of pickle) is refused before numpy
    allocates; so are other globals."""
    cases = {"ndarray": cifar_pickle(Allocates((10**6, 3072)), [0] * 3),
             "reconstruct": pickle.dumps({b"data": _ReconstructHuge()}, protocol=2),
             "global": pickle.dumps({b"data": os.getcwd}, protocol=2)}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError, match="not a CIFAR-10 batch") as err:
            read_cifar_batch(path)
        one_line_naming(err.value, path)


class _ReconstructHuge:
    """Pickles as numpy's own array constructor asked for a terabyte."""

    def __reduce__(self):
        return np.empty(0).__reduce__()[0], (np.ndarray, (10**12,), b"B")


def test_a_malformed_dtype_state_is_refused_not_a_segfault(tmp_path):
    """Found by the fuzzer: two bytes cut from the dtype's pickled state (a 6-tuple instead of numpy's 8) made
    numpy 2's dtype.__setstate__ crash the process; numpy now never sees a state from the file."""
    cut = VALID_CIFAR.replace(b"NNNJ\xff\xff\xff\xff", b"NJ\xff\xff\xff\xff", 1)
    assert len(cut) == len(VALID_CIFAR) - 2
    path = tmp_path / "data_batch_1"
    path.write_bytes(cut)
    with pytest.raises(DataError, match="its dtype |u1 has a state numpy does not write") as err:
        read_cifar_batch(path)
    one_line_naming(err.value, path)


def test_cifar_batch_of_a_device_fifo_or_too_large_file_is_one_line(tmp_path, fifo):
    big = tmp_path / "data_batch_2"
    with open(big, "wb") as handle:
        handle.truncate(300 * 2**20)  # sparse: larger than the 256 MiB a batch may have, no disk used
    for path in [*specials(fifo), big, tmp_path]:
        with time_limit(5), pytest.raises(DataError) as err:
            read_cifar_batch(path)
        one_line_naming(err.value, path)
    with pytest.raises(DataError, match="data_batch_7: missing; a cifar-10-batches-py directory holds"):
        read_cifar_batch(tmp_path / "data_batch_7")


def test_cifar_labels_outside_the_classes_are_one_line(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(cifar_pickle(np.zeros((2, 3072), np.uint8), [3, 10]))
    with pytest.raises(DataError, match=r"its 'labels' must be a list of 2 integers 0\.\.9"):
        read_cifar_batch(path)


# ---------------------------------------------------------------------------------------------------- images


def image_file(fmt: str, size=(8, 6), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


VALID_IMAGES = {"png": image_file("PNG"), "grey.png": image_file("PNG", mode="L"), "jpg": image_file("JPEG"),
                "palette.gif": image_file("GIF", mode="P")}


@FUZZ
@given(name=st.sampled_from(sorted(VALID_IMAGES)), data=st.data(), min_side=st.sampled_from([1, 6, 7]),
       pixels=st.booleans())
def test_image_readers_are_total(tmp_path_factory, name, data, min_side, pixels):
    raw = data.draw(mutations(VALID_IMAGES[name]))
    path = tmp_path_factory.mktemp("img") / f"photo.{name}"
    path.write_bytes(raw)
    try:
        if pixels:
            image = read_image(path, min_side, "optimizee.style")
            assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
            assert min(image.shape[1:]) >= min_side and 0 <= float(image.min()) <= float(image.max()) <= 1
        else:
            height, width = image_size(path, min_side, "optimizee.content_dir")
            assert min(height, width) >= min_side
    except DataError as exc:
        one_line_naming(exc, path)


def test_images_that_are_no_regular_file_or_too_large_are_one_line(tmp_path, fifo):
    big = tmp_path / "huge.png"
    with open(big, "wb") as handle:
        handle.write(VALID_IMAGES["png"])
        handle.truncate(300 * 2**20)  # sparse, past the 256 MiB limit
    for path in [*specials(fifo), big, tmp_path]:
        for reader in (read_image, image_size):
            with time_limit(5), pytest.raises(DataError) as err:
                reader(path, 1, "optimizee.style")
            one_line_naming(err.value, path)
            assert str(err.value).startswith(f"optimizee.style: {path}: ")
        with time_limit(5), pytest.raises(DataError) as err:
            file_sha256(path, "optimizee.style")
        one_line_naming(err.value, path)
    for path in specials(fifo):
        with time_limit(5), pytest.raises(DataError, match="is not a regular file"):
            resolve_image(str(path), "optimizee.style")


def test_a_decompression_bomb_image_is_one_line(tmp_path):
    """Pillow's own limit stays on: a PNG header of 60000 x 60000 pixels is refused before decoding."""
    raw = bytearray(VALID_IMAGES["png"])
    raw[16:24] = (60000).to_bytes(4, "big") * 2  # IHDR width, height
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="DecompressionBombError") as err:
        read_image(path, 1, "optimizee.style")
    one_line_naming(err.value, path)


def test_file_sha256_streams_a_regular_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * (3 * 2**20 + 5))
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- Neural Art


def cli_error(argv, tmp_path, monkeypatch, capsys) -> str:
    """The one line ``l2l`` prints for a bad command, run in-process, before any checkpoint is written."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    with time_limit(120):
        line = cli_one_line_error([*argv, f"hydra.run.dir={run}"], capsys, monkeypatch)
    assert not (run / "checkpoints").exists()
    return line


def test_a_1x1_style_image_is_reported_once(tmp_path, monkeypatch, capsys):
    """The report: the too-small message came wrapped in 'cannot read it as an image (DataError: <itself>)'."""
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    line = cli_error(["train", "optimizee=neural_art", f"optimizee.style={tmp_path / 'one.png'}"], tmp_path,
                     monkeypatch, capsys)
    assert line.count("1x1 pixels") == 1 and "DataError" not in line, line
    assert f"optimizee.style: {tmp_path / 'one.png'}: 1x1 pixels, too small" in line


def test_dev_zero_and_a_fifo_as_style_are_one_line(tmp_path, monkeypatch, capsys, fifo):
    for path in specials(fifo):
        line = cli_error(["train", "optimizee=neural_art", f"optimizee.style={path}"], tmp_path, monkeypatch, capsys)
        assert f"optimizee.style: {path}: is not a regular file" in line


def _photos(root: Path, count: int) -> Path:
    root.mkdir()
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"p{i}.png")
    return root


@pytest.mark.parametrize("split", ["test", "validation"])
def test_a_bad_held_out_photo_fails_when_the_family_is_built(tmp_path, split):
    """Before: the test pool was cut after meta-training, and only then did its unreadable photo fail."""
    content = dict(train=4, validation=2, test=2, validation_photos=1, test_photos=2, scales=[1], split_seed=3)
    root = _photos(tmp_path / "photos", 6)
    index = split_photos(ContentSource.from_config(str(root)), 1, 2, 3)[split][-1]
    bad = ContentSource.from_config(str(root)).paths[index]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = NeuralArtConfig(size=32, content_dir=str(root), content=content)
    with pytest.raises(DataError) as err:
        NeuralArtFamily(cfg)
    one_line_naming(err.value, bad)
    assert str(err.value).startswith("optimizee.content_dir: ")


def test_a_held_out_photo_too_small_fails_when_the_family_is_built(tmp_path):
    root = _photos(tmp_path / "photos", 4)
    index = split_photos(ContentSource.from_config(str(root)), 1, 1, 0)["test"][0]
    small = ContentSource.from_config(str(root)).paths[index]
    Image.new("RGB", (20, 20)).save(small)
    content = dict(train=4, validation=2, test=2, validation_photos=1, test_photos=1, scales=[1])
    with pytest.raises(DataError, match=r"20x20 pixels, too small: both sides must be >= 32"):
        NeuralArtFamily(NeuralArtConfig(size=32, content_dir=str(root), content=content))


# ---------------------------------------------------------------------------------------------------- custom


FAMILY = '''
import torch

class Fam:
    num_params = 3
    def __init__(self, how="ok"):
        self.how = how
        self.w = torch.ones(1, requires_grad=True)
    def sample(self, n, num_steps, gen, device, split):
        return torch.randn(n, 3, generator=gen)
    def initial_params(self, problem):
        return torch.zeros(problem.shape[0], 3)
    def loss(self, problem, theta, step):
        if self.how == "detached":
            return ((theta.detach() - problem) ** 2).sum(1)
        if self.how == "numbers":
            return torch.tensor([float(v) for v in ((theta - problem) ** 2).sum(1).tolist()])
        if self.how == "unused":
            return (problem ** 2).sum(1) * self.w
        if self.how == "sqrt":
            return (theta.abs().sqrt() + problem).sum(1)
        return ((theta - problem) ** 2).sum(1)

def make(how="ok"):
    return Fam(how)
'''

NO_GRADIENT = {
    "detached": r"loss must be differentiable in theta .*; it returned a tensor without a gradient",
    "numbers": r"loss must be differentiable in theta .*; it returned a tensor without a gradient",
    "unused": r"loss must be differentiable in theta .*; it does not depend on theta",
    "sqrt": r"the loss's gradient at initial_params must be finite, of shape \(2, 3\), got shape \(2, 3\) with 6 "
            r"non-finite values",
}


@pytest.mark.parametrize("how", list(NO_GRADIENT))
def test_a_custom_loss_without_a_usable_gradient_fails_when_built(tmp_path, how):
    (tmp_path / "fam.py").write_text(FAMILY)
    target = f"{tmp_path / 'fam.py'}:make"
    with pytest.raises(ConfigError, match=NO_GRADIENT[how]) as err:
        build_family(CustomConfig(target=target, args={"how": how}))
    assert str(err.value).startswith(f"optimizee.target={target}: ") and "\n" not in str(err.value)
    build_family(CustomConfig(target=target))  # the same family with a gradient builds


def test_a_custom_loss_without_gradient_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "fam.py").write_text(FAMILY)
    line = cli_error(["train", "optimizee=custom", f"optimizee.target={tmp_path / 'fam.py'}:make",
                      "+optimizee.args.how=detached", "debug=tiny"], tmp_path, monkeypatch, capsys)
    assert "loss must be differentiable in theta" in line and "it returned a tensor without a gradient" in line


def test_a_custom_target_that_is_no_regular_file_is_one_line(tmp_path):
    fifo_target = tmp_path / "fam.py"
    os.mkfifo(fifo_target)
    (tmp_path / "dir.py").mkdir()
    for path, message in ((fifo_target, "is not a regular file"), (tmp_path / "dir.py", "is a directory")):
        target = f"{path}:make"
        with time_limit(5), pytest.raises(ConfigError, match=message) as err:
            build_family(CustomConfig(target=target))
        assert str(err.value).startswith(f"optimizee.target={target}: ") and "\n" not in str(err.value)
