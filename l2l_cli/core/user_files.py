"""The one way l2l reads a file a user can hand it (checkpoints, run records, tuning-cache entries, IDX files, CIFAR
batches, images, style files, custom targets): a regular file, of bounded size, read with bounded memory, and every
failure one ``UserFileError`` line naming the file. ``tests/test_architecture.py`` fails when a module reads a file
any other way, so a new reader cannot forget the contract.

The contract: the path is a regular file (devices, FIFOs and directories are refused before anything is opened);
its size is checked against what the reader allows; a compressed stream is read header first and then only as many
bytes as the header promises, so a small file cannot inflate into gigabytes; sizes are multiplied in Python integers
(no overflow) and checked before anything is allocated; parsed values (JSON types, labels, shapes, finite weights)
are checked by the reader against what it needs, with ``require``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import stat
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

KiB, MiB, GiB = 2**10, 2**20, 2**30
READ_CHUNK = 16 * MiB  # read_exactly's step
JSON_LIMIT = 64 * MiB  # run.json, metrics.json, results.json, tuning-cache entries, pretrained records


class UserFileError(ValueError):
    """A file l2l was given cannot be used; the message names it (and the key that pointed at it) in one line."""


def _where(path: Path, key: str | None) -> str:
    return f"{key}: {path}" if key else str(path)


def fail(path: str | Path, message: str, key: str | None = None, error: type = UserFileError):
    raise error(f"{_where(Path(path), key)}: {message}")


def require(ok: bool, path: str | Path, message: str, key: str | None = None, error: type = UserFileError) -> None:
    """A value read from ``path`` is what the reader needs, or one line naming the file."""
    if not ok:
        fail(path, message, key, error)


def exception_line(exc: BaseException) -> str:
    """An exception on one line: its type and the first non-empty line of its message."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def regular_file(path: str | Path, limit: int, key: str | None = None, error: type = UserFileError) -> int:
    """The size of ``path``, a regular file of at most ``limit`` bytes (following links), or one line saying why
    not. Nothing is opened: a FIFO would block and a device never ends."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        fail(path, "no such file", key, error)
    except OSError as exc:
        fail(path, f"cannot read it ({exc.strerror or exception_line(exc)})", key, error)
    if stat.S_ISDIR(info.st_mode):
        fail(path, "is a directory, expected a file", key, error)
    if not stat.S_ISREG(info.st_mode):
        fail(path, "is not a regular file (a device, FIFO or socket is never read)", key, error)
    if info.st_size > limit:
        fail(path, f"{info.st_size} bytes, more than the {human(limit)} this reader accepts", key, error)
    return info.st_size


def human(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def read_bytes(path: str | Path, limit: int, key: str | None = None, error: type = UserFileError) -> bytes:
    """All of a regular file of at most ``limit`` bytes (a file that grows while read is cut at ``limit + 1`` and
    refused)."""
    path = Path(path)
    regular_file(path, limit, key, error)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        fail(path, f"cannot read it ({exc.strerror or exception_line(exc)})", key, error)
    require(len(data) <= limit, path, f"more than the {human(limit)} this reader accepts", key, error)
    return data


def read_json(path: str | Path, key: str | None = None, expect: type = dict, limit: int = JSON_LIMIT,
              error: type = UserFileError) -> Any:
    """A JSON document of type ``expect`` (an object by default) from a bounded regular file."""
    path = Path(path)
    data = read_bytes(path, limit, key, error)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        fail(path, f"not valid JSON ({exception_line(exc)})", key, error)
    names = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number",
             bool: "true/false", type(None): "null"}
    require(isinstance(value, expect), path, f"holds {names.get(type(value), type(value).__name__)} of JSON, "
            f"expected {names.get(expect, expect.__name__)}", key, error)
    return value


def open_stream(path: str | Path, limit: int, key: str | None = None, error: type = UserFileError) -> BinaryIO:
    """A binary stream over a regular file of at most ``limit`` bytes on disk; ``.gz`` files decompressed as read,
    so that a reader takes from it only what the header it read first promises (``read_exactly``)."""
    path = Path(path)
    regular_file(path, limit, key, error)
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as exc:
        fail(path, f"cannot read it ({exc.strerror or exception_line(exc)})", key, error)


def read_exactly(stream: BinaryIO, size: int, path: str | Path, what: str, key: str | None = None,
                 error: type = UserFileError) -> bytes:
    """``size`` bytes of ``stream`` (never more), or one line saying the file ends early or is corrupt. Read in
    chunks: memory follows the bytes really there, not what a (lying) header promises."""
    parts, got = [], 0
    try:
        while got < size and (part := stream.read(min(READ_CHUNK, size - got))):
            parts.append(part)
            got += len(part)
    except (OSError, EOFError, zlib.error) as exc:
        fail(path, f"corrupt while reading {what} ({exception_line(exc)})", key, error)
    require(got == size, path, f"ends after {got} of the {size} bytes of {what}", key, error)
    return b"".join(parts)


def at_end(stream: BinaryIO, path: str | Path, key: str | None = None, error: type = UserFileError) -> None:
    """Nothing follows what the header promised (one byte is read to look)."""
    try:
        extra = stream.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        fail(path, f"corrupt after its data ({exception_line(exc)})", key, error)
    require(not extra, path, "holds more bytes than its header promises", key, error)


def product(dims: Iterable[int]) -> int:
    """The product of sizes in Python integers: a header's dimensions cannot wrap around as int64 does."""
    return math.prod(int(d) for d in dims)


def decode(path: str | Path, parse: Callable[[], Any], what: str, key: str | None = None,
           error: type = UserFileError) -> Any:
    """Run a third-party parser (Pillow, torch's weights-only unpickler, a restricted unpickler) on a file already
    checked by ``regular_file``; anything it raises becomes one line naming the file. MemoryError too: a parser
    asked to build more than the machine has is a bad file, not a crash."""
    try:
        return parse()
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - a parser of hostile bytes may raise anything
        if isinstance(exc, error):
            raise
        fail(path, f"not {what} ({exception_line(exc)})", key, error)


def sha256(path: str | Path, limit: int, key: str | None = None, error: type = UserFileError) -> str:
    """The SHA-256 (hex) of a regular file of at most ``limit`` bytes, read in chunks: a device or FIFO is refused
    before anything is opened and a file that grows while read is cut at ``limit + 1`` bytes and refused."""
    path = Path(path)
    regular_file(path, limit, key, error)
    digest, seen = hashlib.sha256(), 0
    try:
        with open(path, "rb") as handle:
            while seen <= limit and (chunk := handle.read(min(MiB, limit + 1 - seen))):
                digest.update(chunk)
                seen += len(chunk)
    except OSError as exc:
        fail(path, f"cannot read it ({exc.strerror or exception_line(exc)})", key, error)
    require(seen <= limit, path, f"more than the {human(limit)} this reader accepts", key, error)
    return digest.hexdigest()


def lookup(data: Any, keys: str, expect: type | tuple = object, default: Any = None) -> Any:
    """``data[k1][k2]...`` for ``keys`` = "k1.k2...", when every level is a JSON object holding the key and the
    value is an ``expect`` (a bool is no int nor float unless ``expect`` names bool); else ``default``. A record's
    optional field, read without a type error whatever the file holds."""
    for name in keys.split("."):
        if not isinstance(data, dict) or name not in data:
            return default
        data = data[name]
    kinds = expect if isinstance(expect, tuple) else (expect,)
    if isinstance(data, bool) and bool not in kinds and object not in kinds:
        return default
    return data if isinstance(data, expect) else default


def is_number(value: Any) -> bool:
    """A JSON number (int or float, NaN and infinities included), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_number(value: Any) -> bool:
    """A JSON number that is a finite float (an integer too large for a float is not one)."""
    if not is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


YAML_LIMIT = MiB  # Hydra's overrides.yaml and config records: a command line's worth of text
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6; the older one unpickles storage sizes unchecked
PICKLED = "it holds pickled Python objects, which are never loaded (weights_only=True)"


def read_yaml(path: str | Path, limit: int = YAML_LIMIT, key: str | None = None, error: type = UserFileError) -> Any:
    """A YAML document (``yaml.safe_load``: plain data only) from a bounded regular file; a parse failure of any
    kind (deep nesting, a bad date) is one line."""
    import yaml  # third-party, used only here

    data = read_bytes(path, limit, key, error)
    return decode(path, lambda: yaml.safe_load(data), "YAML", key, error)


def load_torch(path: str | Path, limit: int, key: str | None = None, error: type = UserFileError) -> Any:
    """``torch.load(weights_only=True)`` of a regular file of at most ``limit`` bytes in torch.save's zip format,
    onto the CPU. Anything torch's unpickler raises on hostile bytes (KeyError, IndexError, MemoryError, ...) is one
    ``unreadable (...)`` line; a pickled Python object is named as such."""
    import torch  # third-party, used only here

    path = Path(path)
    regular_file(path, limit, key, error)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(ZIP_MAGIC))
    except OSError as exc:
        fail(path, f"cannot read it ({exc.strerror or exception_line(exc)})", key, error)
    require(magic == ZIP_MAGIC, path, "unreadable (not the zip archive torch.save writes)", key, error)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - MemoryError included: hostile bytes may make the unpickler raise anything
        pickled = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        # torch's zip reader explains its own internals at length; the reader needs to hear the file is damaged
        damaged = "PytorchStreamReader" in str(exc)
        reason = PICKLED if pickled else "a damaged or truncated zip archive" if damaged else exception_line(exc)
        fail(path, f"unreadable ({reason})", key, error)
