"""The one error type of a bad config value and the checks that raise it, naming the key and what is allowed."""

from __future__ import annotations

import dataclasses

MISSING = "???"  # OmegaConf's marker of a mandatory value (its MISSING is this same string)


class ConfigError(ValueError):
    """A config value that is out of range or inconsistent; the message names the key."""


def check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def check_at_least_one(obj, prefix: str, keys: tuple) -> None:
    for key in keys:
        value = getattr(obj, key)
        check(value >= 1, f"{prefix}{key}", f"must be >= 1, got {value}")


def check_choice(value: str, key: str, allowed: tuple) -> None:
    check(value in allowed, key, f"got {value!r}, allowed values: {', '.join(allowed)}")


def as_dataclass(cls, value):
    """A nested config given as a plain dict (from a checkpoint or DictConfig conversion) as its dataclass."""
    return cls(**value) if isinstance(value, dict) else value


def replace_fields(obj, changes: dict, key: str):
    """A config dataclass with ``changes`` applied: a dict given for a nested dataclass field changes only the
    fields it names (``optimizee: {data: {labels: [0, 1]}}`` keeps data.root)."""
    fields = {f.name for f in dataclasses.fields(obj)}
    new = {}
    for field_name, value in (changes or {}).items():
        if field_name not in fields:
            raise ConfigError(f"{key}.{field_name}: unknown key, allowed keys: {', '.join(sorted(fields))}")
        current = getattr(obj, field_name)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            value = replace_fields(current, value, f"{key}.{field_name}")
        new[field_name] = value
    return dataclasses.replace(obj, **new)
