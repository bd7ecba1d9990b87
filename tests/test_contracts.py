"""The contract every registered optimizee family and every registered learned optimizer meets.

The cases come from the registries, so a new family or architecture is covered by these tests the moment it is
registered: its config composes from its YAML, a tiny meta-training leaves nothing non-finite, its steps keep
optimizees apart, its hand-written BPTT (where it claims one) equals autograd in float64, its checkpoints round-trip
through the registry, and an evaluation table lists it with every baseline. Where three registries meet (family x
architecture x estimator, family x optimizer x command) every pair meets in some case, not every triple: the
pairs are where the interfaces meet, and the full product tripled the suite's slowest file.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from l2l_cli.cli.config import to_objects
from l2l_cli.cli.console import console
from l2l_cli.cli.evaluate import write_evaluation
from l2l_cli.core.random_streams import generator
from l2l_cli.core.registry import ESTIMATORS, OPTIMIZEES, OPTIMIZERS
from l2l_cli.core.schemas import EvalConfig, EvalLoopConfig, TrainLoopConfig
from l2l_cli.evaluation.comparison import evaluate_task
from l2l_cli.meta.estimators.tbptt import OptimizeeRun, fast_path
from l2l_cli.meta.policy import plan_training
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.meta.trainer import MetaTrainer
from l2l_cli.optimizees import build_family, loss_and_grad
from l2l_cli.optimizees.base import held_out_problems, map_tensors
from l2l_cli.optimizers.baselines import baseline_config, build_baseline
from l2l_cli.optimizers.learned import LearnedRule, build_learned
from l2l_cli.optimizers.learned.base import bind_to_family
from l2l_cli.optimizers.learned.loading import load_learned_optimizer

FAMILIES = OPTIMIZEES.names()
LEARNED = OPTIMIZERS.learned()
EVERY_OPTIMIZER = OPTIMIZERS.names()
ESTIMATOR_NAMES = ESTIMATORS.names()


def every_pair(first: list[str], second: list[str], third: list[str]) -> list[tuple[str, str, str]]:
    """Every (first, second) pair once, the third rotating (a Latin square): every pair of the three names meets in
    some case while the number of cases is len(first) * len(second), not the full product (needs both lists at least
    as long as the third)."""
    assert len(first) >= len(third) and len(second) >= len(third)
    return [(a, b, third[(i + j) % len(third)]) for i, a in enumerate(first) for j, b in enumerate(second)]


def each_once(first: list[str], second: list[str]) -> list[tuple[str, str]]:
    """Each name of both lists in at least one case, in max(len) cases."""
    return [(first[k % len(first)], second[k % len(second)]) for k in range(max(len(first), len(second)))]


def tiny_family(name: str, batch_size: int = 2):
    cfg = dataclasses.replace(OPTIMIZEES.get(name).tiny_config(), batch_size=batch_size)
    return cfg, build_family(cfg)


def tiny_learned(name: str, dtype=torch.float32) -> LearnedRule:
    torch.manual_seed(0)
    return build_learned(OPTIMIZERS.get(name).default_config()).to(dtype)


def as_double(problem):
    """A batch of problems (tensors in dataclasses, dicts, lists) with its floating-point tensors in float64."""
    return map_tensors(problem, lambda t: t.double() if t.is_floating_point() else t)


def tiny_trainer(tmp_path, family_name: str, optimizer_name: str, estimator: str = "tbptt", **loop) -> MetaTrainer:
    cfg, family = tiny_family(family_name)
    schedule = TruncatedScheduleConfig(num_steps=4, unroll=2)
    setup = plan_training(family=family, optimizee=cfg, optimizer=OPTIMIZERS.get(optimizer_name).default_config(),
                          schedule=schedule, loop=TrainLoopConfig(**{"iterations": 2, "val_every": 1,
                                                                     "val_functions": 2, **loop}),
                          seed=0, data_seed=0, device=torch.device("cpu"), out_dir=tmp_path, compile=False,
                          estimator=ESTIMATORS.get(estimator).default_config())
    return MetaTrainer(setup)


@pytest.mark.parametrize("family, optimizer, command", every_pair(FAMILIES, EVERY_OPTIMIZER, ["train", "eval"]))
def test_config_composes_and_validates(compose_cfg, family, optimizer, command):
    """Every family's YAML with every optimizer's, each of them under both commands."""
    presets = {"train": ["debug=tiny"], "eval": ["schedule.num_steps=10", "schedule.unroll=5", "eval.num_functions=32"]}
    example = [f"optimizee.{key}={value}" for key, value in OPTIMIZEES.get(family).example.items()]
    conf = to_objects(compose_cfg(command, [f"optimizee={family}", f"optimizer={optimizer}", *example,
                                            *presets[command]]))
    assert type(conf.optimizee) is OPTIMIZEES.get(family).config and conf.optimizee.name == family
    assert type(conf.optimizer) is OPTIMIZERS.get(optimizer).config and conf.optimizer.name == optimizer
    assert conf.optimizer == OPTIMIZERS.get(optimizer).default_config()  # the YAML adds no second default
    assert build_family(conf.optimizee).num_params >= 1
    if optimizer in LEARNED:
        assert sum(p.numel() for p in build_learned(conf.optimizer).parameters()) > 0
    else:
        assert build_baseline(conf.optimizer, 0.1).name == optimizer
    assert conf.schedule.num_steps == 10 and conf.eval.num_functions == 32  # the debug preset applies


@pytest.mark.parametrize("family", FAMILIES)
def test_family_contract(family):
    """sample -> theta_0 -> loss -> gradient; a selected part computes what it does inside the batch; the
    closed-form gradient (where there is one) is autograd's."""
    cfg, fam = tiny_family(family, batch_size=3)
    problem = fam.sample(3, 4, generator(0, "train"))
    theta = fam.initial_params(problem)
    assert theta.shape == (3, fam.num_params) and len(problem) == 3
    losses, grad = loss_and_grad(fam, problem, theta, 1)
    assert losses.shape == (3,) and grad.shape == theta.shape and torch.isfinite(grad).all()
    part = fam.select(problem, 1, 3)
    part_losses, part_grad = loss_and_grad(fam, part, fam.initial_params(part), 1)
    torch.testing.assert_close(part_losses, losses[1:3])
    torch.testing.assert_close(part_grad, grad[1:3])
    copies = fam.repeat(problem, 2)  # the perturbed copies of es / pes: function r * 3 + b is function b
    assert len(copies) == 6
    copy_losses, copy_grad = loss_and_grad(fam, copies, theta.repeat(2, 1), 1)
    torch.testing.assert_close(copy_losses, losses.repeat(2))
    torch.testing.assert_close(copy_grad, grad.repeat(2, 1))
    assert fam.expected_loss(problem, theta).shape == (3,)
    analytic = fam.analytic_loss_and_grad(problem, theta, 1)
    if analytic is not None:
        with torch.enable_grad():
            leaf = theta.clone().requires_grad_()
            (reference,) = torch.autograd.grad(fam.loss(problem, leaf, 1).sum(), leaf)
        torch.testing.assert_close(analytic[1], reference)
    json.dumps(fam.data_record())  # results.json records it


@pytest.mark.parametrize("family, optimizer, estimator", every_pair(FAMILIES, LEARNED, ESTIMATOR_NAMES))
def test_tiny_meta_training_stays_finite_and_its_checkpoints_round_trip(tmp_path, family, optimizer, estimator):
    """Every family with every architecture, and each of them with every estimator (pairwise, not the full product).
    best.pt rebuilds, through the registry alone, the optimizer that validation scored: same config, same weights,
    same steps."""
    trainer = tiny_trainer(tmp_path, family, optimizer, estimator=estimator)
    before = [p.detach().clone() for p in trainer.net.parameters()]
    trainer.fit()
    assert trainer.skipped_total == 0
    assert all(torch.isfinite(p).all() for p in trainer.net.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.net.parameters(), strict=True))
    assert all(math.isfinite(val) for _, val in trainer.history) and len(trainer.history) == 3
    _assert_checkpoints_round_trip(trainer)


@pytest.mark.parametrize("optimizer", LEARNED)
@pytest.mark.parametrize("family", FAMILIES)
def test_learned_step_keeps_optimizees_apart(family, optimizer):
    """Optimizee 0's updates depend on its own gradients only: other optimizees' gradients changed, or left out,
    change nothing of them."""
    _, fam = tiny_family(family)
    net = tiny_learned(optimizer, torch.float64)
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(3, fam.num_params, generator=gen, dtype=torch.float64)
    grads = [torch.randn(3, fam.num_params, generator=gen, dtype=torch.float64) * 10.0 ** -k for k in range(4)]

    def updates(batch_grads):
        state, out = net.init_state(theta[: len(batch_grads[0])]), []
        for t, g in enumerate(batch_grads):
            update, state = net.step(g, state, t)
            out.append(update[0])
        return torch.stack(out)

    with torch.no_grad():
        together = updates(grads)
        others_changed = updates([torch.cat((g[:1], -3 * g[1:])) for g in grads])
        alone = updates([g[:1] for g in grads])
    assert together.abs().max() > 0
    torch.testing.assert_close(others_changed, together, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(alone, together, rtol=1e-12, atol=1e-14)


MANUAL = [name for name in LEARNED if fast_path(tiny_learned(name), compiled=False) is not None]


@pytest.mark.parametrize("weighting", ["uniform", "log"])
@pytest.mark.parametrize("optimizer", MANUAL)
@pytest.mark.parametrize("family", FAMILIES)
def test_manual_bptt_equals_autograd(family, optimizer, weighting):
    """Two consecutive unrolls (the second from a carried state) in float64: the same meta-gradient, theta and
    losses whichever way the gradient is computed."""
    _, fam = tiny_family(family)
    problem = as_double(fam.sample(2, 6, generator(0, "train")))
    net = tiny_learned(optimizer, torch.float64)
    manual = OptimizeeRun(fam, problem, net, weighting=weighting, manual=fast_path(net, compiled=False))
    autograd = OptimizeeRun(fam, problem, net, weighting=weighting, manual=None)
    for start in (0, 3):
        a, b = manual.unroll(start, 3), autograd.unroll(start, 3)
        assert any(g.abs().max() > 0 for g in b.grads)
        for x, y in zip(a.grads, b.grads, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(a.loss_sum, b.loss_sum, rtol=1e-12, atol=0)
        torch.testing.assert_close(manual.theta, autograd.theta, rtol=1e-12, atol=1e-14)


def _assert_checkpoints_round_trip(trainer: MetaTrainer) -> None:
    best, payload = load_learned_optimizer(trainer.checkpoint_dir / "best.pt")
    assert type(best) is type(trainer.net) and best.config == trainer.net.config
    assert payload["iteration"] == trainer.best_iteration
    net, payload = load_learned_optimizer(trainer.checkpoint_dir / "last.pt")  # the weights the trainer ends with
    assert payload["iteration"] == trainer.iteration
    trained = trainer.net.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, trained[key])
    grad = torch.randn(2, trainer.s.family.num_params)
    for rule in (net, trainer.net):  # as every run does: the layout decides parameter groups (a mixture's training
        bind_to_family(rule, trainer.s.family)  # left the trainer's bound to its last batch's member)
    assert net.binding() == trainer.net.binding()
    with torch.no_grad():
        torch.testing.assert_close(net.step(grad, net.init_state(grad))[0],
                                   trainer.net.step(grad, trainer.net.init_state(grad))[0], rtol=0, atol=0)


@pytest.mark.parametrize("family, optimizer", each_once(FAMILIES, LEARNED))
def test_eval_table_has_every_baseline(tmp_path, family, optimizer):
    cfg, fam = tiny_family(family)
    members = getattr(fam, "member_families", None)
    if callable(members):  # a mixture is evaluated member by member (test_general)
        fam = next(iter(members().values()))[0]
        cfg = OPTIMIZEES.get("mixture").tiny_config().member_list()[0].optimizee
    net = tiny_learned(optimizer).eval()
    val = held_out_problems(fam, 2, 5, 0, "validation")
    test = held_out_problems(fam, 3, 5, 0, "test")
    baselines = {name: baseline_config(name) for name in OPTIMIZERS.baselines()}
    result = evaluate_task(fam, val, test, 5, baselines, [0.01, 0.1], 0, learned=(optimizer, net))
    conf = EvalConfig(optimizee=cfg, optimizer=net.config, schedule=TruncatedScheduleConfig(),
                      eval=EvalLoopConfig(num_functions=3, val_functions=2, lr_grid=[0.01, 0.1], refine_lr=0))
    with console().capture() as captured:
        results = write_evaluation(tmp_path, result, conf, fam.data_record(), {"optimizer": optimizer}, None)
    table = captured.get()
    assert list(results["optimizers"]) == [optimizer, *OPTIMIZERS.baselines()]
    for name in results["optimizers"]:
        assert name in table
    assert results["best_baseline"] in OPTIMIZERS.baselines() and results["studied"] == optimizer
    assert json.loads((tmp_path / "results.json").read_text())["optimizers"].keys() == results["optimizers"].keys()
