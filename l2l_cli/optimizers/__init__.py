"""Optimizers applied to a batch of optimizees: learned ones (``learned/``, one ``LearnedRule`` interface) and the
hand-designed baselines (``baselines/``). Both have ``init_state(theta) -> state`` and ``step(grad, state, t) ->
(update, state)`` with theta_{t+1} = theta_t + update, so rollouts, validation and evaluation treat them alike.
Every one registers itself in ``core.registry.OPTIMIZERS`` (the config group ``optimizer=``).
"""
