"""Optimizers applied to a batch of optimizees: the learned LSTM and the hand-designed baselines.

Both follow one interface, so rollouts, validation and evaluation treat them alike:
``init_state(theta) -> state`` and ``step(grad, state, t) -> (update, state)`` with theta_{t+1} = theta_t + update.
"""

from l2l_cli.optimizers.baselines import Baseline
from l2l_cli.optimizers.lstm import CoordinatewiseLSTM, LearnedRule
from l2l_cli.optimizers.preprocessing import num_features, preprocess

__all__ = ["Baseline", "CoordinatewiseLSTM", "LearnedRule", "num_features", "preprocess"]
