"""Nesterov accelerated gradient: the SGD rule (sgd.py) with Nesterov momentum 0.9 by default."""

from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.baselines.sgd import SGD, SGDConfig

OPTIMIZERS.register("nag", SGDConfig, SGD, momentum=0.9, nesterov=True)
