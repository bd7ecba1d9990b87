"""Balancing the groups of a mixed meta-training in the meta-gradient (``train.balance_members``).

A mixture's members give meta-gradients of very different sizes: a quadratic's log loss moves orders of magnitude
more per unit of step size than a ReLU net's. Adam on the learned optimizer's weights then scales every update by
the largest member's second moment (and clipping cuts only the largest), so the small members barely steer it. Each
meta-gradient is divided by the running RMS of its own group's meta-gradient norms, so every member's updates have
about unit norm and count by how often the member is drawn (its ``weight``), not by how steep its loss is.
"""

from __future__ import annotations

import math
from typing import Dict, Hashable, List, Optional


class GroupBalance:
    """Per group: an exponential moving average of squared meta-gradient norms (``decay`` per update of that group,
    bias-corrected), whose square root divides the group's meta-gradients."""

    def __init__(self, decay: float = 0.9):
        self.decay = decay
        self.moments: Dict[str, List[float]] = {}  # group -> [average of squared norms, updates seen]

    def scale(self, group: Optional[Hashable], norm: float) -> float:
        """The factor for a finite meta-gradient of ``norm`` from ``group`` (1 where there are no groups)."""
        if group is None or not math.isfinite(norm):
            return 1.0
        moment, count = self.moments.get(str(group), [0.0, 0])
        moment, count = self.decay * moment + (1 - self.decay) * norm * norm, count + 1
        self.moments[str(group)] = [moment, count]
        rms = math.sqrt(moment / (1 - self.decay ** count))
        return 1.0 / rms if rms > 0 else 1.0

    def state(self) -> dict:
        return {name: list(value) for name, value in self.moments.items()}

    def load_state(self, state: dict) -> None:
        self.moments = {str(name): [float(value[0]), int(value[1])] for name, value in state.items()}
