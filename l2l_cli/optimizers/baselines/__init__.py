"""Hand-designed optimizers (the baselines an evaluation tunes and compares with): one module per update rule, each
its config (extending ``base.BaselineConfig``), a ``base.Baseline`` subclass and ``OPTIMIZERS.register(name, Config,
Class)``; plus ``conf/optimizer/<name>.yaml``. The registry finds the modules; ``eval.baselines`` picks which ones
an evaluation runs."""

from l2l_cli.optimizers.baselines.base import Baseline, BaselineConfig, baseline_config, build_baseline

__all__ = ["Baseline", "BaselineConfig", "baseline_config", "build_baseline"]
