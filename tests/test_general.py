"""The generalising learned optimizer (adam_mlp) and what it meta-trains on (optimizee=mixture)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from conftest import run_cli

from l2l_cli.api import pretrained as shipping
from l2l_cli.core.checkpoints import CheckpointError, load_checkpoint
from l2l_cli.core.checks import ConfigError
from l2l_cli.core.random_streams import generator
from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.core.schemas import TrainLoopConfig
from l2l_cli.meta.balance import GroupBalance
from l2l_cli.meta.estimators.pes import PESConfig
from l2l_cli.meta.schedules.loguniform import LogUniformScheduleConfig
from l2l_cli.meta.setup import TrainSetup
from l2l_cli.meta.stopping import StopRequested
from l2l_cli.meta.trainer import MetaTrainer, meta_optimizer
from l2l_cli.meta.validation import Validator, geometric_mean
from l2l_cli.optimizees import build_family, loss_and_grad
from l2l_cli.optimizees.base import parameter_layout
from l2l_cli.optimizees.mixture import MixtureConfig
from l2l_cli.optimizers.learned.adam_mlp import AdamMLP, AdamMLPConfig, per_tensor, tensor_rms

LAYOUT = (("w", 12), ("b", 4))


def random_net(seed: int = 0, **cfg) -> AdamMLP:
    """adam_mlp with weights far from its Adam-like start, so every test sees the MLP at work."""
    torch.manual_seed(seed)
    net = AdamMLP(AdamMLPConfig(**cfg)).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "log_lr":
                p.normal_(0, 1.0)
        net.log_lr.fill_(math.log(0.05))
    net.bind(LAYOUT, horizon=40)
    return net


@torch.no_grad()
def run(net, grads):
    state = net.init_state(torch.zeros(grads[0].shape, dtype=torch.float64))
    updates = []
    for t, g in enumerate(grads):
        u, state = net.step(g.double(), state, t)
        updates.append(u)
    return updates


@pytest.mark.parametrize("adapt", [{}, {"adapt_range": 3.0}], ids=["plain", "adaptive"])
def test_a_zero_gradient_gives_a_zero_update_and_a_vanished_one_a_vanishing_update(adapt):
    net = random_net(**adapt)
    assert all(torch.equal(u, torch.zeros(3, 16, dtype=torch.float64)) for u in run(net, [torch.zeros(3, 16)] * 5))
    grads = [torch.randn(3, 16, dtype=torch.float64) for _ in range(10)] + [torch.zeros(3, 16)] * 300
    updates = run(net, grads)
    assert updates[9].abs().max() > 1e-3
    # the nominal term's momentum (0.9) decays as 0.9^t / sqrt(0.999^t): 300 steps on, below 1e-12 x the bound
    assert updates[-1].abs().max() < 1e-10


@pytest.mark.parametrize("c", [1e-3, 1e3])
@pytest.mark.parametrize("adapt", [{}, {"adapt_range": 3.0}], ids=["plain", "adaptive"])
def test_the_update_does_not_change_when_the_loss_is_rescaled(c, adapt):
    net = random_net(1, eps=1e-14, **adapt)
    # every |g| >> eps at both scales: eps is the only part of the update that sees the loss's scale
    grads = [torch.randn(3, 16, dtype=torch.float64).sign() * (0.5 + torch.rand(3, 16)) for _ in range(8)]
    for u, v in zip(run(net, grads), run(net, [g * c for g in grads]), strict=True):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4 * float(u.abs().max()))


@pytest.mark.parametrize("adapt", [{}, {"adapt_range": 3.0}], ids=["plain", "adaptive"])
def test_the_update_is_the_nominal_adam_step_within_its_stated_bound(adapt):
    """|update| <= exp(log_lr + lr_range + adapt_range) (|a| + correction * rms_tensor(a)), a = Adam's m_hat /
    (sqrt(v_hat) + eps) by hand; heavy-tailed gradients, weights far from the start."""
    net = random_net(2, **adapt)
    cfg = net.config
    grads = [torch.distributions.Cauchy(0.0, 1.0).sample((3, 16)).double() for _ in range(30)]
    m = torch.zeros(3, 16, dtype=torch.float64)
    v = torch.zeros_like(m)
    for t, (g, u) in enumerate(zip(grads, run(net, grads), strict=True)):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        a = (m / (1 - 0.9 ** (t + 1))) / ((v / (1 - 0.999 ** (t + 1))).sqrt() + cfg.eps)
        rms = per_tensor(torch.ones_like(a), tensor_rms(a, (12, 4)), (12, 4))  # each coordinate's tensor's rms
        bound = math.exp(math.log(0.05) + cfg.lr_range + cfg.adapt_range) * (a.abs() + cfg.correction * rms)
        assert (u.abs() <= bound * (1 + 1e-9)).all()


def test_with_its_mlp_silent_it_is_adam():
    torch.manual_seed(3)
    net = AdamMLP(AdamMLPConfig(init_lr=0.01, adapt_range=0.0)).double()
    with torch.no_grad():
        net.head.weight.zero_()
        net.log_lr.fill_(math.log(0.01))  # in float64: exactly Adam's 0.01
    net.bind((("theta", 5),), horizon=20)
    param = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    adam = torch.optim.Adam([param], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    theta = param.detach().clone().unsqueeze(0)
    state = net.init_state(theta)
    for t in range(20):
        g = torch.randn(5, dtype=torch.float64)
        param.grad = g.clone()
        adam.step()
        update, state = net.step(g.unsqueeze(0), state, t)
        theta = theta + update
    torch.testing.assert_close(theta[0], param.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("adapt", [{}, {"adapt_range": 3.0}], ids=["plain", "adaptive"])
def test_statistics_are_per_tensor_and_per_function(adapt):
    """A coordinate's update depends on its own tensor of its own function only: the drop-in cuts the state per
    parameter tensor, es / pes with shared perturbations step functions side by side in one row."""
    net = random_net(4, **adapt)
    g = torch.randn(3, 16, dtype=torch.float64)
    whole = run(net, [g])[0]
    net.bind((("w", 12),), horizon=40)
    torch.testing.assert_close(run(net, [g[:, :12]])[0], whole[:, :12])
    net.bind(LAYOUT, horizon=40)
    side_by_side = run(net, [g.reshape(1, 48)])[0]
    torch.testing.assert_close(side_by_side.reshape(3, 16), whole)
    changed = g.clone()
    changed[:, 12:] *= 100  # the other tensor
    changed[1:] = torch.randn(2, 16)  # the other functions
    torch.testing.assert_close(run(net, [changed])[0][0, :12], whole[0, :12])


def test_the_adaptive_step_grows_while_gradients_agree_and_shrinks_while_they_alternate():
    """adapt_range: each tensor's h moves by rate * cos(g, m_prev): +rate per step under a steady gradient,
    -rate under one that flips sign every step, never past +-adapt_range; the update's size follows exp(h)."""
    net = AdamMLP(AdamMLPConfig(adapt_range=0.5, adapt_rate=0.1)).double()
    with torch.no_grad():
        net.head.weight.zero_()  # the MLP silent: Adam with step exp(log_lr + h)
    net.bind(LAYOUT, horizon=40)
    steady = torch.randn(2, 16, dtype=torch.float64)
    state = net.init_state(steady)
    sizes = []
    for t in range(8):
        update, state = net.step(steady, state, t)
        sizes.append(float(update.detach().abs().mean()))
    torch.testing.assert_close(state[-1], torch.full_like(steady, 0.5))  # 0.1 x 7 steps after the first, capped
    assert sizes[5] == pytest.approx(sizes[0] * math.exp(0.5), rel=1e-3)
    state = net.init_state(steady)
    for t in range(4):
        _, state = net.step(steady * (-1) ** t, state, t)
    # the first step has no momentum yet (cos 0); after it every gradient opposes the momentum before it (cos -1)
    torch.testing.assert_close(state[-1], torch.full_like(steady, -0.3))


@pytest.mark.parametrize("horizon, stretch, moved", [(40, True, 0.3), (200, True, 0.3), (1000, True, 0.06),
                                                      (2000, True, 0.03), (1000, False, 0.3)])
def test_beyond_the_training_horizon_the_step_size_state_follows_the_fraction_done(horizon, stretch, moved):
    """adapt_stretch: a run longer than default_horizon moves h at rate * default_horizon / horizon (so after the
    same fraction of any run h has moved as far); runs up to default_horizon, as in meta-training, at the rate."""
    net = AdamMLP(AdamMLPConfig(adapt_range=3.0, adapt_rate=0.1, default_horizon=200,
                                adapt_stretch=stretch)).double()
    net.bind(LAYOUT, horizon=horizon)
    steady = torch.randn(2, 16, dtype=torch.float64)
    state = net.init_state(steady)
    for t in range(4):  # cos(g, m_prev) = 1 after the first step: three moves
        _, state = net.step(steady, state, t)
    torch.testing.assert_close(state[-1], torch.full_like(steady, moved))
    weights = {k: v.unsqueeze(0).expand(2, *v.shape) for k, v in net.named_parameters()}
    _, copies = net.step_copies(weights, steady, net.init_state(steady), 0)
    _, copies = net.step_copies(weights, steady, copies, 1)  # es / pes copies stretch alike
    torch.testing.assert_close(copies[-1], torch.full_like(steady, moved / 3))


def test_the_fraction_of_the_run_done_reaches_the_step():
    net = random_net(5)
    g = [torch.randn(3, 16, dtype=torch.float64)] * 2
    net.bind(LAYOUT, horizon=10)
    short = run(net, g)
    net.bind(LAYOUT, horizon=1000)
    long = run(net, g)
    assert not torch.allclose(short[1], long[1])


def test_meta_weight_decay_shrinks_matrices_only():
    net = random_net(6).float()
    opt = meta_optimizer(net, TrainLoopConfig(weight_decay=0.5, meta_lr=0.1))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in net.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        assert moved == (p.dim() >= 2), name


# --- the mixture ------------------------------------------------------------------------------------------------

def mixture(**changes):
    members = [{"name": "quad", "optimizee": {"name": "quadratic", "dim": 3}, "weight": 3.0, "steps": [4, 64]},
               {"name": "mlp", "optimizee": {"name": "mnist", "hidden": 4, "activation": "relu"}, "weight": 1.0,
                "steps": [5, 5]}]
    return build_family(MixtureConfig(**{"members": members, "batch_size": 2, **changes}))


def test_members_are_drawn_by_weight_with_log_uniform_run_lengths():
    family = mixture()
    gen = generator(0, "train")
    draws = [family.sample(2, 100, gen) for _ in range(400)]
    counts = Counter(d.member for d in draws)
    assert 250 < counts["quad"] < 350  # 300 expected (weights 3 : 1), sd ~ 8.7
    quad_steps = sorted(d.num_steps for d in draws if d.member == "quad")
    assert min(quad_steps) >= 4 and max(quad_steps) <= 64 and {d.num_steps for d in draws if d.member == "mlp"} == {5}
    assert 12 <= quad_steps[len(quad_steps) // 2] <= 20  # log-uniform: the median near sqrt(4 * 64) = 16
    mlp = next(d for d in draws if d.member == "mlp")
    assert family.initial_params(mlp).shape == (2, 784 * 4 + 4 + 4 * 10 + 10)
    assert [n for n, _ in parameter_layout(family, mlp)] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_training_functions_are_the_members_reparameterised_per_tensor():
    family = mixture(parameter_scale=0.0, tensor_scale=4.6)
    gen = generator(1, "train")
    problem = next(p for p in (family.sample(2, 5, gen) for _ in range(50)) if p.member == "mlp")
    scale = problem.problem.scale
    start = 0
    for _, size in parameter_layout(family, problem):
        block = scale[:, start: start + size]
        assert torch.allclose(block, block[:, :1].expand_as(block))  # one factor per tensor and function
        start += size
    assert scale.max() / scale.min() > 3  # and they differ
    member = family.families["mlp"]
    theta = family.initial_params(problem)
    torch.testing.assert_close(family.loss(problem, theta, 0),
                               member.loss(problem.problem.problem, theta * scale, 0))


def test_held_out_functions_come_from_each_member():
    family = mixture()
    with pytest.raises(ConfigError, match="optimizee=mixture: validation functions come from each member"):
        family.sample(2, 5, generator(0, "validation"), split="validation")
    validator = Validator(family, 2, 0, torch.device("cpu"))
    net = random_net().float()
    score = validator.score(net, 7)
    assert set(validator.parts) == {"quad", "mlp"}
    assert score == pytest.approx(geometric_mean(list(validator.parts.values())))
    assert {steps for _, steps in validator.problems} == {64, 5}  # each member at its longest run


@pytest.mark.parametrize("members, key", [
    ([{"name": "a", "optimizee": {"name": "nope"}}], "optimizee.members.a.optimizee.name"),
    ([{"name": "a", "optimizee": {"name": "mixture"}}], "optimizee.members.a.optimizee.name"),
    ([{"name": "a", "optimizee": {"name": "quadratic", "dimm": 3}}], "optimizee.members.a.optimizee.dimm"),
    ([{"name": "a", "optimizee": {"name": "quadratic"}, "steps": [10, 5]}], "optimizee.members.a.steps"),
    ([{"name": "a", "optimizee": {"name": "quadratic"}, "weight": 0}], "optimizee.members.a.weight"),
    ([{"name": "a", "optimizee": {"name": "quadratic"}, "wieght": 1}], "optimizee.members.a.wieght"),
    ([{"name": "a", "optimizee": {"name": "custom"}}], "optimizee.members.a.optimizee"),
    ([{"optimizee": {"name": "quadratic"}}], "optimizee.members.0.name"),
    ([{"name": "a", "optimizee": 7}], "optimizee.members.a.optimizee"),
    ([{"name": "a", "optimizee": {"name": "quadratic"}, "steps": 5}], "optimizee.members.a.steps"),
    ([3], "optimizee.members.0"),
    ({"a": 3}, "optimizee.members.0"),
    ([{"name": "a", "optimizee": {"name": "quadratic"}}] * 2, "optimizee.members"),
    ([], "optimizee.members"),
])
def test_a_bad_member_is_one_line_naming_its_key(members, key):
    with pytest.raises(ConfigError) as err:
        MixtureConfig(members=members)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_the_default_mixture_builds_every_member():
    family = build_family(OPTIMIZEES.get("mixture").default_config())
    assert len(family.families) >= 5
    kinds = {m.optimizee.name for m in family.members.values()}
    assert {"quadratic", "mnist"} <= kinds and not kinds & {"convnet", "neural_art"}  # held out in kind
    problem = family.sample(2, 10, generator(0, "train"))
    losses, grad = loss_and_grad(family, problem, family.initial_params(problem), 0)
    assert torch.isfinite(losses).all() and torch.isfinite(grad).all()


def test_a_checkpoint_records_the_mixture_it_rebuilds():
    from dataclasses import asdict

    cfg = MixtureConfig()
    assert MixtureConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg


@pytest.mark.slow
def test_a_mixture_run_is_evaluated_per_member_and_shipped(tmp_path):
    """`l2l train optimizee=mixture` evaluates every member as a variant; `pretrained add` keeps every variant's
    table, the first as its headline, and a check on it that recomputes."""
    run_dir = tmp_path / "run"
    members = ("[{name: quad, optimizee: {name: quadratic, dim: 3}, steps: [4, 8]}, "
               "{name: mlp, optimizee: {name: mnist, hidden: 4}, steps: [4, 6]}]")
    train = run_cli("train", "debug=tiny", "optimizee=mixture", "optimizer=adam_mlp", "estimator=pes",
                    f"optimizee.members={members}", "eval.num_functions=8", "eval.val_functions=4",
                    "eval.lr_grid=[0.1]", f"hydra.run.dir={run_dir}")
    assert train.returncode == 0, train.stderr[-2000:]
    study = json.loads((run_dir / "eval" / "results.json").read_text())
    assert list(study["variants"]) == ["quad", "mlp"]
    assert {v["num_steps"] for v in study["variants"].values()} == {8, 6}  # each member at its longest run
    info = shipping.package("tiny_general", run_dir, directory=tmp_path)
    assert list(info["variants"]) == ["quad", "mlp"] and info["evaluation"] == info["variants"]["quad"]
    shipped = load_checkpoint(tmp_path / "tiny_general.pt")
    check = info["check"]
    assert check["task"]["optimizee"]["name"] == "quadratic" and check["num_steps"] == 8
    again = shipping.check_figures(shipped, check["baseline"], check["baseline_lr"], check["num_functions"],
                                   check["task"])
    assert again == check
    study["variants"] = {"../../elsewhere": study["variants"]["quad"]}  # a results.json pointing outside the run
    (run_dir / "eval" / "results.json").write_text(json.dumps(study))
    with pytest.raises(CheckpointError, match="its variants are not plain names"):
        shipping.package("tiny_general", run_dir, directory=tmp_path, replace=True)


# --- balancing the members' meta-gradients (train.balance_members) ---------------------------------------------

def test_each_group_s_meta_gradients_are_scaled_to_unit_rms():
    balance = GroupBalance(decay=0.9)
    steep, flat = [], []
    for k in range(30):
        norm = 100.0 * (1 + 0.1 * math.sin(k))
        steep.append(norm * balance.scale("quadratic", norm))
        flat.append(1e-3 * balance.scale("relu", 1e-3))
    assert steep[0] == pytest.approx(1.0) and flat == pytest.approx([1.0] * 30)
    assert all(0.8 < n < 1.2 for n in steep)
    assert balance.scale(None, 5.0) == 1.0 and balance.scale("relu", math.inf) == 1.0  # ungrouped, non-finite
    assert balance.moments["relu"][1] == 30  # the non-finite norm changed nothing
    restored = GroupBalance(decay=0.9)
    restored.load_state(balance.state())
    assert restored.scale("quadratic", 50.0) == balance.scale("quadratic", 50.0)


def _mixture_setup(out_dir, iterations, **loop):
    loop_cfg = TrainLoopConfig(iterations=iterations, meta_lr=0.01, val_every=2, checkpoint_every=2, val_functions=4,
                               evaluate=False, **loop)
    return TrainSetup(family=mixture(), optimizer=AdamMLPConfig(), estimator=PESConfig(pairs=1),
                      schedule=LogUniformScheduleConfig(num_steps=8, unroll=4, min_unroll=2), loop=loop_cfg,
                      batch_size=2, seed=0, data_seed=0, device=torch.device("cpu"), out_dir=out_dir)


def test_balanced_meta_training_resumes_to_the_same_weights(tmp_path):
    straight = MetaTrainer(_mixture_setup(tmp_path / "straight", 6, balance_members=True))
    straight.fit()
    assert set(straight.balance.moments) == {"quad", "mlp"}
    unbalanced = MetaTrainer(_mixture_setup(tmp_path / "unbalanced", 6))
    unbalanced.fit()
    assert any(not torch.equal(a, b) for a, b in zip(straight.net.parameters(), unbalanced.net.parameters(),
                                                       strict=True))
    first = MetaTrainer(_mixture_setup(tmp_path / "split", 6, balance_members=True))
    with pytest.raises(StopRequested):
        first.fit(should_stop=lambda: 15 if first.iteration == 3 else 0)
    second = MetaTrainer(_mixture_setup(tmp_path / "split", 6, balance_members=True))
    last = tmp_path / "split" / "checkpoints" / "last.pt"
    second.restore(load_checkpoint(last), last)
    second.fit()
    for (name, a), b in zip(straight.net.state_dict().items(), second.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert second.balance.moments == straight.balance.moments


def test_the_step_size_probe_reads_the_step_an_optimizer_takes(monkeypatch):
    """examples/step_size_probe.py (the diagnostic of docs/experiments/general.md): Adam at lr 0.01 reads as 0.01 at
    every step; the adaptive step grows on a quadratic."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("step_size_probe", ROOT / "examples" / "step_size_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    monkeypatch.setattr(probe, "FUNCTIONS", 3)
    quadratic = probe.MEMBERS["quadratic_10"]
    sizes, final, blown = probe.probe(AdamMLP(AdamMLPConfig(adapt_range=0.0)).eval(), quadratic, 30)
    assert sizes == pytest.approx([0.01] * 6, rel=0.02) and math.isfinite(final) and blown == 0
    adaptive, better, _ = probe.probe(AdamMLP(AdamMLPConfig(adapt_range=3.0, adapt_rate=0.05)).eval(), quadratic, 30)
    assert adaptive[0] == pytest.approx(0.01, rel=0.02) and adaptive[-1] > 0.02 and better < final
    # past default_horizon the step-size state moves at rate * default_horizon / steps: the step grows more slowly
    stretched, _, _ = probe.probe(AdamMLP(AdamMLPConfig(adapt_range=3.0, adapt_rate=0.05, default_horizon=10)).eval(),
                                  quadratic, 30)
    assert 0.01 < stretched[2] < adaptive[2]


def test_a_variant_sets_its_own_function_counts_or_says_which_key_is_wrong():
    from l2l_cli.cli.evaluate import apply_variant
    from l2l_cli.core.schemas import EvalConfig

    conf = EvalConfig(optimizee=OPTIMIZEES.get("quadratic").default_config())
    conf.eval.num_functions, conf.eval.val_functions = 256, 64
    column = apply_variant(conf, "convnet", {"optimizee": {"name": "convnet"}, "num_steps": 100, "val_functions": 4,
                                             "num_functions": 32})
    assert (column.eval.val_functions, column.eval.num_functions, column.eval.num_steps) == (4, 32, 100)
    assert column.optimizee.name == "convnet"
    same = apply_variant(conf, "mnist", {"optimizee": {"name": "mnist"}})
    assert (same.eval.val_functions, same.eval.num_functions) == (64, 256)
    for variant, message in (({"num_functions": 0}, "eval.variants.v.num_functions: must be a whole number >= 1"),
                             ({"val_functions": 2.5}, "eval.variants.v.val_functions: must be a whole number >= 1"),
                             ({"lr": 1}, "eval.variants.v: unknown key 'lr', allowed keys: optimizee, num_steps")):
        with pytest.raises(ConfigError, match=message):
            apply_variant(conf, "v", variant)
