"""l2l: meta-train learned optimizers (Andrychowicz et al., 2016) and compare them with tuned baselines."""

__version__ = "0.1.0"
