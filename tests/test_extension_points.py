"""The extension points themselves: a Hydra-free core, registries that find what is added, and a learned optimizer
without a hand-written BPTT trained and evaluated through the same paths as the LSTM."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from conftest import ROOT

from l2l_cli.core.checkpoints import CheckpointError, save_checkpoint
from l2l_cli.core.random_streams import generator
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import LearnedOptimizerConfig, TrainLoopConfig
from l2l_cli.evaluation.rollout import chunk_functions, function_chunks, run
from l2l_cli.meta.estimators.tbptt import TBPTTConfig
from l2l_cli.meta.policy import plan_training
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.meta.trainer import MetaTrainer
from l2l_cli.optimizees.quadratic import QuadraticConfig, QuadraticFamily
from l2l_cli.optimizers.learned import LearnedRule
from l2l_cli.optimizers.learned.loading import load_learned_optimizer

# every module outside the CLI layer (which alone may import hydra)
CORE = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
              for p in (ROOT / "l2l_cli").rglob("*.py") if "cli" not in p.relative_to(ROOT / "l2l_cli").parts[:1])


def test_the_numerical_core_imports_no_hydra():
    """A fresh interpreter: the core, with every registered family and optimizer module loaded, leaves hydra and
    omegaconf unimported (and the check itself can see them: the CLI layer does import them)."""
    code = ("import sys\n"
            + "".join(f"import {m}\n" for m in CORE)
            + "from l2l_cli.core.registry import ESTIMATORS, OPTIMIZEES, OPTIMIZERS, SCHEDULES\n"
              "assert OPTIMIZEES.names() and OPTIMIZERS.names() and ESTIMATORS.names() and SCHEDULES.names()\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')))\n"
              "import l2l_cli.cli.config\n"
              "print('hydra' in sys.modules and 'omegaconf' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


@dataclass
class MomentumConfig(LearnedOptimizerConfig):
    name: str = "test_momentum"
    init_lr: float = 0.01


class LearnedMomentum(LearnedRule):
    """A two-parameter learned optimizer (a learned step size and momentum), with no hand-written BPTT."""

    def __init__(self, cfg: MomentumConfig):
        super().__init__(cfg)
        self.log_lr = torch.nn.Parameter(torch.tensor(float(cfg.init_lr)).log())
        self.logit_beta = torch.nn.Parameter(torch.tensor(0.0))

    def init_state(self, theta):
        return [torch.zeros_like(theta)]

    def step(self, grad, state, t=0):
        momentum = torch.sigmoid(self.logit_beta) * state[0] + grad
        return -self.log_lr.exp() * momentum, [momentum]


@pytest.fixture
def registered_momentum():
    OPTIMIZERS.register("test_momentum", MomentumConfig, LearnedMomentum, learned=True)
    yield
    OPTIMIZERS.unregister("test_momentum")


def test_an_architecture_without_manual_bptt_trains_through_autograd(tmp_path, registered_momentum, caplog):
    """estimator.bptt=manual (the default) falls back to autograd, never a TypeError; checkpoints rebuild it through the
    registry; validation and the meta-update treat it as any other."""
    cfg = QuadraticConfig(dim=3, batch_size=4)
    setup = plan_training(family=QuadraticFamily(cfg), optimizee=cfg, optimizer=MomentumConfig(),
                          schedule=TruncatedScheduleConfig(num_steps=6, unroll=3),
                          loop=TrainLoopConfig(iterations=3, val_every=1, val_functions=4),
                          estimator=TBPTTConfig(bptt="manual"),
                          seed=0, data_seed=0, device=torch.device("cpu"), out_dir=tmp_path, compile=False)
    with caplog.at_level("INFO"):
        trainer = MetaTrainer(setup)
    assert trainer.estimator.manual is None and "no hand-written BPTT" in caplog.text
    before = trainer.net.log_lr.item()
    trainer.fit()
    assert trainer.net.log_lr.item() != before and trainer.skipped_total == 0
    net, payload = load_learned_optimizer(tmp_path / "checkpoints" / "best.pt")
    assert isinstance(net, LearnedMomentum) and payload["optimizer"] == {"name": "test_momentum", "init_lr": 0.01}


def test_a_checkpoint_of_an_unknown_architecture_fails_with_one_line(tmp_path):
    path = save_checkpoint({"optimizer": {"name": "hypernetwork"}, "model": {}}, tmp_path / "x.pt")
    allowed = ", ".join(OPTIMIZERS.learned())
    with pytest.raises(CheckpointError, match=rf"x.pt: its learned optimizer 'hypernetwork' is not one this l2l has "
                                              rf"\(allowed values: {allowed}\)"):
        load_learned_optimizer(path)


def test_registering_a_name_twice_is_refused(registered_momentum):
    with pytest.raises(ValueError, match="registered twice"):
        OPTIMIZERS.register("test_momentum", MomentumConfig, lambda cfg: None, learned=True)


def test_evaluation_in_chunks_equals_one_pass(monkeypatch):
    """Evaluation runs the functions in chunks of EVAL_COORDINATES coordinates: same losses, same expected final
    losses as one pass over all of them."""
    from l2l_cli.evaluation import rollout as rollout_module
    from l2l_cli.optimizers.baselines import baseline_config, build_baseline

    family = QuadraticFamily(QuadraticConfig(dim=5))
    problem = family.sample(7, 8, generator(0, "test"))
    rule = build_baseline(baseline_config("adam"), 0.1)
    whole = run(family, problem, rule, 8)
    monkeypatch.setattr(rollout_module, "EVAL_COORDINATES", 10)  # chunks of 2 functions, and a last of 1
    assert chunk_functions(family) == 2 and function_chunks(7, 2) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    chunked = run(family, problem, rule, 8)
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=0)
    torch.testing.assert_close(chunked[1], whole[1], rtol=0, atol=0)
    monkeypatch.setattr(rollout_module, "EVAL_COORDINATES", 2**19)
    monkeypatch.setattr(family, "functions_per_chunk", 3, raising=False)  # a family's own size, within the bound
    assert chunk_functions(family) == 3
    chunked = run(family, problem, rule, 8)
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=0)
    torch.testing.assert_close(chunked[1], whole[1], rtol=0, atol=0)
