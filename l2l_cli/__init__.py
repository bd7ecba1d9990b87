"""l2l: meta-train learned optimizers (Andrychowicz et al., 2016) and compare them with tuned baselines.

``from l2l_cli import LearnedOptimizer``: a trained learned optimizer as a ``torch.optim.Optimizer`` for any model
(``l2l_cli.api.torch_optimizer``); imported on first use, so the `l2l` command starts without it.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "LearnedOptimizer":
        # lazy: importing l2l_cli (the `l2l` command) must not load torch and the optimizer stack
        from l2l_cli.api.torch_optimizer import LearnedOptimizer

        return LearnedOptimizer
    raise AttributeError(f"module 'l2l_cli' has no attribute {name!r}")


__all__ = ["LearnedOptimizer", "__version__"]
