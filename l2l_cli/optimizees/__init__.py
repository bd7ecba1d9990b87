"""Optimizee families: distributions over functions f(theta) that an optimizer is trained or tested on.

A family is one module here: its config dataclass (extending ``schemas.OptimizeeConfig``), a class following
``base.Family``, and ``OPTIMIZEES.register(name, Config, Family)``; plus ``conf/optimizee/<name>.yaml``.
"""

import dataclasses

from l2l_cli.core.checks import ConfigError, check, replace_fields
from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.optimizees.base import DataError, Family, loss_and_grad


def build_family(cfg) -> Family:
    """The family for an optimizee config dataclass, through the registry."""
    return OPTIMIZEES.get(cfg.name).build(cfg)


def family_config(changes: dict, key: str, base=None):
    """A family's config from ``{name: <family>, <its fields>}``: the fields given on top of ``base`` (when the name is
    base's or absent) or of the named family's defaults; one line naming ``key`` for anything wrong."""
    changes = dict(changes or {})
    name = changes.pop("name", base.name if base is not None else None)
    try:
        if base is None or name != base.name:
            check(name in OPTIMIZEES.names(), f"{key}.name",
                  f"got {name!r}, allowed values: {', '.join(OPTIMIZEES.names())}")
            entry = OPTIMIZEES.get(name)
            fields = {f.name for f in dataclasses.fields(entry.config)}
            unknown = sorted(set(changes) - fields)
            check(not unknown, f"{key}.{unknown[0] if unknown else ''}",
                  f"unknown key, allowed keys: {', '.join(sorted(fields))}")
            # plain values at construction (a family may have no valid default, as custom's target); nested ones
            # merged into their defaults below
            flat = {k: v for k, v in changes.items() if not isinstance(v, dict)}
            base = entry.config(name=name, **{**entry.defaults, **flat})
            changes = {k: v for k, v in changes.items() if isinstance(v, dict)}
        return replace_fields(base, changes, key)
    except ConfigError as exc:
        if str(exc).startswith(key):
            raise
        raise ConfigError(f"{key}: {exc}") from None


__all__ = ["DataError", "Family", "OPTIMIZEES", "build_family", "family_config", "loss_and_grad"]
