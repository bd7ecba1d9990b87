"""The baselines, generated from the registry: every registered one follows its reference step by step (its
torch.optim optimizer, or where torch has none the rule as published, written below as a plain per-tensor loop), at
its defaults and with every hyperparameter moved; a batch of B functions gives exactly what B separate runs give.
A new baseline with neither reference fails here rather than going untested.

Then Lion against the paper's numbers, AdamW against Adam, the configs' one-line errors, and eval.baselines end to
end."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch

from l2l_cli.cli.config import config_groups_help, to_objects
from l2l_cli.cli.evaluate import evaluate
from l2l_cli.core.checks import ConfigError
from l2l_cli.core.random_streams import generator
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import DEFAULT_BASELINES
from l2l_cli.evaluation.comparison import tune_learning_rate
from l2l_cli.evaluation.rollout import rollout
from l2l_cli.optimizees import loss_and_grad
from l2l_cli.optimizees.quadratic import QuadraticConfig, QuadraticFamily
from l2l_cli.optimizers.baselines import Baseline, BaselineConfig, baseline_config, build_baseline
from l2l_cli.optimizers.baselines.sgd import SGD, SGDConfig

BASELINES = sorted(OPTIMIZERS.baselines())
STEPS = 15


# --- update rules as published, for the baselines torch.optim lacks ------------------------------------------------

class PublishedLion:
    """Chen et al. (2023), "Symbolic Discovery of Optimization Algorithms", Algorithm 2 (Lion), per tensor:

        c_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        theta_t = theta_{t-1} - lr * (sign(c_t) + lambda * theta_{t-1})
        m_t = beta2 * m_{t-1} + (1 - beta2) * g_t
    """

    def __init__(self, params, lr: float, beta1: float, beta2: float, weight_decay: float):
        self.params = list(params)
        self.lr, self.beta1, self.beta2, self.weight_decay = lr, beta1, beta2, weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        for i, theta in enumerate(self.params):
            g, m = theta.grad, self.m[i]
            c = self.beta1 * m + (1 - self.beta1) * g
            theta.copy_(theta - self.lr * (torch.sign(c) + self.weight_decay * theta))
            self.m[i] = self.beta2 * m + (1 - self.beta2) * g


# name -> (params, config, lr) -> an object with step() that reads each param's .grad: the reference of every
# registered baseline whose torch_reference is None
PUBLISHED = {
    "lion": lambda params, cfg, lr: PublishedLion(params, lr, cfg.beta1, cfg.beta2, cfg.weight_decay),
}


def reference(rule: Baseline, params):
    ref = rule.torch_reference(params)
    if ref is not None:
        return ref
    if rule.name not in PUBLISHED:
        pytest.fail(f"baseline {rule.name!r}: torch.optim has no reference (torch_reference is None) and "
                    f"tests/test_baselines.py has no published rule for it: add one to PUBLISHED")
    return PUBLISHED[rule.name](params, rule.cfg, rule.lr)


# --- the generated reference test ----------------------------------------------------------------------------------

def _moved(value):
    """Another valid-looking value of a hyperparameter (the config's own checks decide)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return 0.3 if value == 0 else math.sqrt(value) if value < 1 else 2 * value
    return None


def variants(name: str) -> list:
    """The registered defaults, each hyperparameter moved alone (where the config accepts it), and all of them moved
    together: configs to check against the reference."""
    default = baseline_config(name)
    configs, together = [default], default
    for key in [f.name for f in dataclasses.fields(default) if f.name not in ("name", "lr")]:
        if _moved(getattr(default, key)) is None:
            continue
        try:
            configs.append(dataclasses.replace(default, **{key: _moved(getattr(default, key))}))
        except ConfigError:
            pass
        try:
            together = dataclasses.replace(together, **{key: _moved(getattr(together, key))})
        except ConfigError:
            pass
    if together not in configs:
        configs.append(together)
    return configs


def quadratic_problem(functions: int = 4, dim: int = 5):
    family = QuadraticFamily(QuadraticConfig(dim=dim))
    problem = family.sample(functions, STEPS, generator(0, "test"))
    problem.W, problem.y, problem.theta0 = problem.W.double(), problem.y.double(), problem.theta0.double()
    return family, problem


def assert_follows_reference(family, problem, cfg: BaselineConfig, lr: float, rtol: float = 1e-9) -> torch.Tensor:
    """The batched rule against one reference run per function, the same gradients into both, every step; returns
    the batched thetas (STEPS + 1, B, P)."""
    rule = build_baseline(cfg, lr)
    theta = family.initial_params(problem)
    state = rule.init_state(theta)
    params = [theta[b].clone() for b in range(len(problem))]
    refs = [reference(rule, [p]) for p in params]
    trajectory = [theta]
    for t in range(STEPS):
        _, grad = loss_and_grad(family, problem, theta, t)
        update, state = rule.step(grad, state, t)
        theta = theta + update
        trajectory.append(theta)
        for b, (p, ref) in enumerate(zip(params, refs, strict=True)):
            _, g = loss_and_grad(family, family.select(problem, b, b + 1), p.detach().unsqueeze(0), t)
            p.grad = g[0].clone()
            ref.step()
        torch.testing.assert_close(theta, torch.stack(params), rtol=rtol, atol=1e-12,
                                   msg=lambda m, t=t: f"{cfg} at lr {lr}, step {t + 1}: {m}")
    return torch.stack(trajectory)


@pytest.mark.parametrize("lr", [0.003, 0.1])
@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_follows_its_reference(name, lr):
    family, problem = quadratic_problem()
    configs = variants(name)
    assert len(configs) >= 2  # every baseline here has a hyperparameter besides lr
    for cfg in configs:
        assert_follows_reference(family, problem, cfg, lr)


def test_every_baseline_has_a_reference_and_every_published_rule_a_baseline():
    lacking = [n for n in BASELINES if build_baseline(baseline_config(n), 0.1).torch_reference(
        [torch.zeros(1, requires_grad=True)]) is None]
    assert set(lacking) <= set(PUBLISHED), f"no reference for {sorted(set(lacking) - set(PUBLISHED))}"
    assert set(PUBLISHED) <= set(BASELINES)
    assert "lion" in lacking  # torch has no Lion: the published rule is what it is held to


class SignSGD(Baseline):
    def step(self, grad, state, t):
        return -self.lr * torch.sign(grad), state


def test_a_baseline_without_any_reference_fails_the_reference_test():
    """What a new baseline without torch_reference meets until its published rule is added to PUBLISHED."""
    OPTIMIZERS.register("test_signsgd", BaselineConfig, SignSGD)
    try:
        family, problem = quadratic_problem(1)
        with pytest.raises(pytest.fail.Exception, match="'test_signsgd': torch.optim has no reference"):
            assert_follows_reference(family, problem, BaselineConfig(name="test_signsgd"), 0.1)
    finally:
        OPTIMIZERS.unregister("test_signsgd")


@pytest.mark.parametrize("name", BASELINES)
def test_batch_equals_separate_runs_through_rollout(name):
    """rollout (theta + update, as every evaluation runs it) on a batch gives each function's own run's losses."""
    family, problem = quadratic_problem()
    rule = build_baseline(baseline_config(name), 0.03)
    batched = rollout(family, problem, rule, STEPS)
    for b in range(len(problem)):
        alone = rollout(family, family.select(problem, b, b + 1), build_baseline(baseline_config(name), 0.03), STEPS)
        torch.testing.assert_close(batched[:, b], alone[:, 0], rtol=1e-12, atol=1e-12)


# --- Lion and AdamW ------------------------------------------------------------------------------------------------

def lion(lr=0.1, **fields):
    return build_baseline(dataclasses.replace(baseline_config("lion"), **fields), lr)


def test_lion_matches_the_paper_by_hand():
    """Two steps of Algorithm 2 worked by hand (lr 0.1, lambda 0.5, beta1 0.9, beta2 0.99): the second step's sign
    comes from beta1 * m + (1 - beta1) * g with the momentum before its beta2 update (-0.0003 < 0 for the first
    coordinate, though m is positive)."""
    theta0 = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    g1 = torch.tensor([[0.3, -0.1, 0.0]], dtype=torch.float64)
    g2 = torch.tensor([[-0.03, -0.03, 0.0]], dtype=torch.float64)
    expected = [torch.tensor([[0.85, -1.8, 0.475]], dtype=torch.float64),
                torch.tensor([[0.9075, -1.61, 0.45125]], dtype=torch.float64)]
    rule = lion(weight_decay=0.5)
    state, theta = rule.init_state(theta0), theta0
    p = theta0[0].clone()
    published = PublishedLion([p], 0.1, 0.9, 0.99, 0.5)
    for t, (g, want) in enumerate(zip((g1, g2), expected, strict=True)):
        update, state = rule.step(g, state, t)
        theta = theta + update
        p.grad = g[0].clone()
        published.step()
        torch.testing.assert_close(theta, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(p, want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(state["m"], 0.99 * 0.01 * g1 + 0.01 * g2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lion_equals_the_published_rule_bit_for_bit(weight_decay):
    """Same gradients into the batched rule and the paper's per-tensor loop: the same numbers, exactly."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    grads = torch.randn(20, 3, 7, generator=gen, dtype=torch.float64)
    rule = lion(lr=0.01, beta1=0.8, beta2=0.95, weight_decay=weight_decay)
    state = rule.init_state(theta)
    params = [row.clone() for row in theta]
    published = [PublishedLion([p], 0.01, 0.8, 0.95, weight_decay) for p in params]
    for t, grad in enumerate(grads):
        update, state = rule.step(grad, state, t)
        theta = theta + update
        for p, ref, g in zip(params, published, grad, strict=True):
            p.grad = g.clone()
            ref.step()
        assert torch.equal(theta, torch.stack(params)), f"step {t + 1}"


def test_lion_weight_decay_shrinks_where_the_sign_is_zero():
    rule = lion(lr=0.1, weight_decay=0.5)
    theta = torch.tensor([[2.0, -4.0]])
    update, _ = rule.step(torch.zeros(1, 2), rule.init_state(theta), 0)
    torch.testing.assert_close(update, torch.tensor([[-0.1, 0.2]]))  # -lr * lambda * theta
    update, _ = lion(lr=0.1).step(torch.zeros(1, 2), lion(lr=0.1).init_state(theta), 0)
    assert torch.equal(update, torch.zeros(1, 2))


def test_adamw_weight_decay_differs_from_adam_and_matches_torch():
    family, problem = quadratic_problem()
    adam = baseline_config("adam")
    adamw = dataclasses.replace(baseline_config("adamw"), weight_decay=0.1)
    with_decay = assert_follows_reference(family, problem, adamw, 0.1)  # torch.optim.AdamW, weight_decay 0.1
    plain = assert_follows_reference(family, problem, adam, 0.1)
    assert not torch.allclose(with_decay, plain)
    no_decay = assert_follows_reference(family, problem, dataclasses.replace(adamw, weight_decay=0.0), 0.1)
    assert torch.equal(no_decay, plain)  # weight_decay 0: Adam, bit for bit
    assert build_baseline(adamw, 0.1).torch_reference([torch.zeros(1, requires_grad=True)]).__class__ \
        is torch.optim.AdamW


def test_adamw_keeps_theta_as_the_caller_computes_it():
    family, problem = quadratic_problem()
    rule = build_baseline(baseline_config("adamw"), 0.1)
    theta = family.initial_params(problem)
    state = rule.init_state(theta)
    for t in range(3):
        _, grad = loss_and_grad(family, problem, theta, t)
        update, state = rule.step(grad, state, t)
        theta = theta + update
        assert torch.equal(state["theta"], theta)


# --- configs --------------------------------------------------------------------------------------------------------

def test_nag_is_sgd_with_nesterov_momentum():
    entry = OPTIMIZERS.get("nag")
    assert entry.config is SGDConfig and entry.build is SGD and OPTIMIZERS.get("sgd").build is SGD
    assert baseline_config("nag") == SGDConfig(name="nag", lr=None, momentum=0.9, nesterov=True)
    assert baseline_config("sgd") == SGDConfig(name="sgd", lr=None, momentum=0.0, nesterov=False)
    sgd = build_baseline(baseline_config("nag"), 0.01).torch_reference([torch.zeros(1, requires_grad=True)])
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is True


def test_nag_differs_from_plain_momentum():
    family, problem = quadratic_problem(2)
    nag = rollout(family, problem, build_baseline(baseline_config("nag"), 0.01), 10)
    heavy_ball_cfg = SGDConfig(name="nag", momentum=0.9, nesterov=False)
    heavy_ball = rollout(family, problem, build_baseline(heavy_ball_cfg, 0.01), 10)
    assert not torch.allclose(nag, heavy_ball)


def test_each_baseline_has_only_its_own_keys():
    keys = {name: {f.name for f in dataclasses.fields(baseline_config(name))} - {"name", "lr"} for name in BASELINES}
    assert keys["sgd"] == keys["nag"] == {"momentum", "nesterov"}
    assert keys["rmsprop"] == {"alpha", "eps"} and keys["adam"] == {"beta1", "beta2", "eps"}
    assert keys["adamw"] == {"beta1", "beta2", "eps", "weight_decay"}
    assert keys["lion"] == {"beta1", "beta2", "weight_decay"}
    assert [f.name for f in dataclasses.fields(BaselineConfig)] == ["name", "lr"]


@pytest.mark.parametrize("name, fields, message", [
    ("adamw", {"weight_decay": -0.1}, "optimizer.weight_decay: must be >= 0 (0 = off), got -0.1"),
    ("lion", {"weight_decay": math.inf}, "optimizer.weight_decay: must be >= 0 (0 = off), got inf"),
    ("lion", {"beta1": 1.0}, "optimizer.beta1: must be in [0, 1), got 1.0"),
    ("lion", {"beta2": -0.5}, "optimizer.beta2: must be in [0, 1), got -0.5"),
    ("adam", {"beta1": 1.5}, "optimizer.beta1: must be in [0, 1), got 1.5"),
    ("adamw", {"eps": 0.0}, "optimizer.eps: must be > 0, got 0.0"),
    ("rmsprop", {"alpha": 1.0}, "optimizer.alpha: must be in [0, 1), got 1.0"),
    ("nag", {"momentum": 1.0}, "optimizer.momentum: must be in [0, 1), got 1.0"),
    ("sgd", {"nesterov": True}, "optimizer.nesterov: needs optimizer.momentum > 0"),
    ("lion", {"lr": -1.0}, "optimizer.lr: must be a positive number or null (tune), got -1.0"),
    ("adam", {"lr": math.nan}, "optimizer.lr: must be a positive number or null (tune), got nan"),
])
def test_config_checks_name_the_key_in_one_line(name, fields, message):
    with pytest.raises(ConfigError) as error:
        dataclasses.replace(baseline_config(name), **fields)
    assert str(error.value) == message


def test_unknown_and_learned_names_are_refused_in_one_line():
    allowed = ", ".join(BASELINES)
    with pytest.raises(ConfigError, match=f"^optimizer.name: got 'lbfgs', allowed values: {allowed}$"):
        SGDConfig(name="lbfgs")
    with pytest.raises(ConfigError, match="^optimizer.name: got 'lbfgs', allowed values: "):
        baseline_config("lbfgs")
    with pytest.raises(ConfigError, match=f"^optimizer: 'lstm' is a learned optimizer, not a baseline; allowed "
                                          f"values: {allowed}$"):
        baseline_config("lstm")


def test_baseline_builds_the_registered_class():
    """``Baseline(cfg, lr)`` (the pre-plugin spelling, still used by benchmarks/) builds what build_baseline does."""
    for name in BASELINES:
        rule = build_baseline(baseline_config(name), 0.1)
        assert type(rule) is OPTIMIZERS.get(name).build and rule.name == name and rule.lr == 0.1
        assert type(copy.deepcopy(rule)) is type(rule)
    with pytest.raises(TypeError, match="abstract"):  # a rule without its step
        type("NoStep", (Baseline,), {})(baseline_config("sgd"), 0.1)


# --- eval.baselines -------------------------------------------------------------------------------------------------

TINY_EVAL = ["optimizer=sgd", "optimizee.dim=4", "schedule.num_steps=6", "schedule.unroll=3", "eval.num_functions=6",
             "eval.val_functions=3", "eval.lr_grid=[0.01,0.1]", "eval.refine_lr=0", "threads=1"]


def test_default_eval_baselines_are_todays_four(compose_cfg):
    conf = to_objects(compose_cfg("eval", TINY_EVAL))
    assert conf.eval.baselines == list(DEFAULT_BASELINES) == ["sgd", "nag", "rmsprop", "adam"]
    assert set(DEFAULT_BASELINES) < set(BASELINES)


def test_eval_baselines_adamw_and_lion_end_to_end(compose_cfg, tmp_path):
    conf = to_objects(compose_cfg("eval", [*TINY_EVAL, "eval.baselines=[adamw,lion]"]))
    assert conf.eval.baselines == ["adamw", "lion"]
    final = evaluate(conf, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["optimizers"]) == ["sgd", "adamw", "lion"]  # the studied one, then eval.baselines' order
    assert results["best_baseline"] in ("sgd", "adamw", "lion") and math.isfinite(final)
    for name in ("adamw", "lion"):
        assert results["learning_rates"][name]["tuned"] and math.isfinite(results["optimizers"][name]["final_mean"])


def test_studying_a_new_baseline_composes(compose_cfg):
    conf = to_objects(compose_cfg("eval", [*TINY_EVAL[1:], "optimizer=lion", "optimizer.weight_decay=0.1",
                                           "optimizer.lr=0.003"]))
    assert conf.optimizer == dataclasses.replace(baseline_config("lion"), weight_decay=0.1, lr=0.003)
    with pytest.raises(ConfigError, match=r"^optimizer.weight_decay: must be >= 0 \(0 = off\), got -1.0$"):
        to_objects(compose_cfg("eval", [*TINY_EVAL[1:], "optimizer=adamw", "optimizer.weight_decay=-1"]))


def test_unknown_eval_baseline_is_one_line(compose_cfg):
    with pytest.raises(ConfigError) as error:
        to_objects(compose_cfg("eval", [*TINY_EVAL, "eval.baselines=[adamw,lbfgs]"]))
    assert str(error.value) == f"eval.baselines: got 'lbfgs', allowed values: {', '.join(BASELINES)}"


def test_help_lists_the_registered_baselines():
    from l2l_cli.cli.main import COMMANDS

    assert f"baselines (eval.baselines): {', '.join(BASELINES)}" in config_groups_help().splitlines()
    assert not any(name in COMMANDS["eval"][1].lower().split() for name in ("sgd", "nag", "rmsprop", "adam"))


# --- tuning and tables ----------------------------------------------------------------------------------------------

def test_learning_rate_refinement_around_the_grid_optimum():
    family = QuadraticFamily(QuadraticConfig(dim=5))
    problem = family.sample(16, 20, generator(0, "validation"))
    cfg = baseline_config("adam")
    coarse = tune_learning_rate(family, problem, cfg, [0.001, 0.1, 10.0], 20)
    refined = tune_learning_rate(family, problem, cfg, [0.001, 0.1, 10.0], 20, refine=2)
    assert set(coarse.scores) < set(refined.scores) and len(refined.scores) == 7
    assert refined.scores[refined.lr] == min(refined.scores.values()) <= coarse.scores[coarse.lr]
    factor = 10 ** 0.25
    assert any(abs(lr - coarse.lr * factor) < 1e-12 or abs(lr - coarse.lr / factor) < 1e-12 for lr in refined.scores)
    assert not refined.at_grid_edge
    too_small = tune_learning_rate(family, problem, cfg, [1e-5, 1e-4], 20, refine=1)
    assert too_small.at_grid_edge and too_small.lr > 1e-4  # refinement went past the grid's end: flagged


def test_a_baseline_that_reaches_zero_loss_gives_ratios_not_a_crash():
    """A tuned baseline can land exactly on the minimum (final loss 0.0 in float32): the table's ratios to it are
    inf (worse) or 1 (equal), never a ZeroDivisionError."""
    from l2l_cli.cli.console import console, results_table
    from l2l_cli.evaluation.comparison import curve_stats, ratio

    losses = {"lstm": torch.tensor([[1.0, 1.0], [0.5, 0.0]]), "nag": torch.tensor([[1.0, 1.0], [0.0, 0.0]])}
    stats = {name: curve_stats(value) for name, value in losses.items()}
    with console().capture() as captured:
        console().print(results_table(stats, {}, "lstm", "nag", "zero"))
    assert "inf" in captured.get()
    assert (ratio(0.5, 0.0), ratio(0.0, 0.0), ratio(0.3, 0.6)) == (math.inf, 1.0, 0.5)
