"""Optimizee families: distributions over functions f(theta) that an optimizer is trained or tested on."""

import functools

from l2l_cli.optimizees.base import DataError, Family, loss_and_grad
from l2l_cli.optimizees.quadratic import QuadraticFamily


@functools.lru_cache(maxsize=4)
def _pools(root, split_seed: int, validation: int, test: int):
    from l2l_cli.optimizees.digits import make_pools

    return make_pools(root, split_seed, validation, test)


def build_family(cfg) -> Family:
    """Family for an optimizee config dataclass."""
    if cfg.name == "quadratic":
        return QuadraticFamily(dim=cfg.dim, distribution=cfg.distribution, init_std=cfg.init_std)
    if cfg.name == "mnist":
        from l2l_cli.optimizees.mlp import MLPFamily

        pools = _pools(cfg.data.root, cfg.data.split_seed, cfg.data.validation, cfg.data.test)
        return MLPFamily(pools, hidden=cfg.hidden, layers=cfg.layers, activation=cfg.activation,
                         minibatch=cfg.minibatch, init_std=cfg.init_std,
                         images_per_function=cfg.data.images_per_function)
    raise ValueError(f"optimizee.name: unknown family {cfg.name!r}")


__all__ = ["DataError", "Family", "QuadraticFamily", "build_family", "loss_and_grad"]
