"""The one error type of a bad config value and the checks that raise it, naming the key and what is allowed."""

from __future__ import annotations

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
