"""ES and PES meta-gradients (estimator=es | pes): against exact gradients on tiny systems with closed forms,
the bias PES removes, exact antithetic cancellation, and the vmapped step of all perturbed copies."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import functional_call

from l2l_cli.core.checks import ConfigError
from l2l_cli.core.random_streams import generator
from l2l_cli.core.registry import ESTIMATORS
from l2l_cli.core.schemas import TrainLoopConfig
from l2l_cli.meta.estimators import perturbed as evolution
from l2l_cli.meta.estimators.perturbed import ParticleStep, PerturbedRun
from l2l_cli.meta.estimators.tbptt import OptimizeeRun
from l2l_cli.meta.policy import plan_training
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.optimizees.base import map_tensors
from l2l_cli.optimizees.quadratic import QuadraticConfig, QuadraticFamily
from l2l_cli.optimizers.learned.adam_mlp import AdamMLP, AdamMLPConfig
from l2l_cli.optimizers.learned.base import LearnedRule
from l2l_cli.optimizers.learned.lstm import CoordinatewiseLSTM, LSTMConfig
from l2l_cli.optimizers.learned.lstm_gac import GlobalAveragingLSTM, LSTMGACConfig


class LinearRule(LearnedRule):
    """update = -(w0 g + w1 tanh g): linear in its weights, so a one-step loss is quadratic in them, and the
    Gaussian-smoothed gradient ES estimates is the exact gradient."""

    coordinatewise = True

    def __init__(self, weights):
        super().__init__(SimpleNamespace(name="linear"))
        self.w = nn.Parameter(torch.tensor(weights, dtype=torch.float64))

    def init_state(self, theta):
        return theta.new_zeros(theta.shape)  # unused: the rule has no memory

    def step(self, grad, state, t=0):
        return -(self.w[0] * grad + self.w[1] * torch.tanh(grad)), state


def _problems(n: int, dim: int = 3, steps: int = 12):
    family = QuadraticFamily(QuadraticConfig(dim=dim))
    problem = map_tensors(family.sample(n, steps, generator(0, "train")), lambda t: t.double())
    return family, problem


def _es(family, problem, net, pairs, seed, persistent, sigma, num_steps=1, unroll=1, shared=False):
    """The run's estimate of the gradient of its whole objective: the sum of its truncations' estimates."""
    run = PerturbedRun(family, problem, net, torch.Generator().manual_seed(seed), sigma=sigma, pairs=pairs,
                       persistent=persistent, shared=shared)
    return sum(run.unroll(start, unroll).grads[0] for start in range(0, num_steps, unroll))


def _exact(family, problem, net, num_steps, unroll):
    """Autograd through the unroll with second derivatives: exact within each truncation (num_steps = unroll: the
    whole run's gradient)."""
    run = OptimizeeRun(family, problem, net, second_order=True)
    return sum(run.unroll(start, unroll).grads[0] for start in range(0, num_steps, unroll))


def test_es_converges_to_the_true_gradient_as_pairs_grow():
    n = 4
    family, problem = _problems(n)
    net = LinearRule([0.05, 0.02])
    per_function = torch.stack([_exact(family, family.select(problem, b, b + 1), net, 1, 1) for b in range(n)])
    true = per_function.mean(0)
    # a pair's estimate is z z^T g_b (z standard normal, exactly, for a loss quadratic in the weights): variance
    # |g_b|^2 + g_bj^2 in coordinate j
    variance = (per_function.pow(2).sum(1, keepdim=True) + per_function.pow(2)).sum(0) / n ** 2
    errors = []
    for pairs in (16, 256, 4096):
        estimate = _es(family, problem, net, pairs, seed=pairs, persistent=False, sigma=0.01)
        standard_error = (variance / pairs).sqrt()
        assert ((estimate - true).abs() <= 4 * standard_error).all(), (pairs, estimate, true, standard_error)
        errors.append(float((estimate - true).norm() / true.norm()))
    assert errors[-1] < 0.05, errors


def test_es_with_shared_perturbations_converges_to_the_true_gradient():
    """estimator.shared: one perturbation per pair for every function; a pair's estimate is then z z^T g with g the
    batch's mean gradient, so its variance is that of one function with the mean gradient."""
    n = 4
    family, problem = _problems(n)
    net = LinearRule([0.05, 0.02])
    true = _exact(family, problem, net, 1, 1)
    variance = true.pow(2).sum() + true.pow(2)
    for pairs in (64, 4096):
        estimate = _es(family, problem, net, pairs, seed=pairs, persistent=False, sigma=0.01, shared=True)
        assert ((estimate - true).abs() <= 4 * (variance / pairs).sqrt()).all(), (pairs, estimate, true)
    assert float((estimate - true).norm() / true.norm()) < 0.05


def test_shared_perturbations_need_a_coordinatewise_optimizer():
    family, problem = _problems(2)
    net = GlobalAveragingLSTM(LSTMGACConfig())
    with pytest.raises(ConfigError, match="estimator.shared: needs a coordinatewise learned optimizer"):
        PerturbedRun(family, problem, net, torch.Generator(), sigma=0.01, pairs=1, persistent=True, shared=True)
    assert ParticleStep(net).copies is None  # its averaging is not the plain LSTM's batched step


@pytest.mark.parametrize("shared", [False, True])
def test_pes_is_unbiased_for_the_whole_run_and_truncated_es_is_not(shared):
    """12 steps in 4 truncations of 3: PES's estimates average to the whole run's gradient; truncated ES's to the
    sum of the truncations' own gradients (what truncated BPTT computes), which differs from it."""
    family, problem = _problems(2)
    net = LinearRule([0.03, 0.0])
    whole = _exact(family, problem, net, 12, 12)[0]
    truncated = _exact(family, problem, net, 12, 3)[0]
    assert abs(whole - truncated) > 0.2 * abs(whole)  # the system has a real truncation bias

    def mean_and_error(persistent):
        # a small sigma: the smoothed objective's gradient is then the gradient itself (the run's loss is a
        # polynomial of degree 24 in the weight)
        runs = torch.stack([_es(family, problem, net, 1000, seed, persistent, sigma=1e-5, num_steps=12, unroll=3,
                                shared=shared)[0] for seed in range(12)])
        return runs.mean(), runs.std() / math.sqrt(len(runs))

    pes, pes_error = mean_and_error(persistent=True)
    es, es_error = mean_and_error(persistent=False)
    assert abs(pes - whole) < 4 * pes_error, (pes, whole, pes_error)
    assert abs(es - truncated) < 4 * es_error, (es, truncated, es_error)
    assert abs(pes - truncated) > 10 * pes_error and abs(es - whole) > 10 * es_error


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("persistent", [False, True])
def test_antithetic_pairs_cancel_the_zeroth_order_term_exactly(persistent, shared):
    """A weight that changes no update: each pair's copies reach the same (large) losses bit for bit, so its
    estimate is exactly 0, where one-sided ES (eps L / sigma^2) would report noise of the losses' size."""
    family, problem = _problems(3)
    problem.y.add_(30.0)  # losses in the thousands
    class Idle(LinearRule):
        def step(self, grad, state, t=0):
            return -(0.05 * grad + 0.0 * self.w[1] * grad), state

    idle = Idle([0.05, 0.0])
    run = PerturbedRun(family, problem, idle, torch.Generator().manual_seed(0), sigma=0.1, pairs=8,
                       persistent=persistent, shared=shared)
    for start in (0, 2):
        result = run.unroll(start, 2)
        assert result.loss_sum > 1000
        assert torch.equal(result.grads[0], torch.zeros(2, dtype=torch.float64))
        assert result.grads[0].grad_fn is None  # no autograd graph: memory does not grow with the truncation


def _lstm():
    return CoordinatewiseLSTM(LSTMConfig(hidden_size=5))


def _adaptive_adam_mlp():
    net = AdamMLP(AdamMLPConfig(hidden_size=4, adapt_range=3.0))
    net.bind((("w", 4), ("b", 2)), horizon=10)
    return net


@pytest.mark.parametrize("make", [_lstm, _adaptive_adam_mlp], ids=["lstm", "adam_mlp"])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("per_call", [None, 24])
def test_one_vmapped_step_equals_each_copy_stepped_with_its_own_weights(monkeypatch, per_call, batched, make):
    """All copies in one call (or, on the CPU, groups of COORDINATES_PER_CALL coordinates) compute what a loop over
    the copies, each with its own weights, computes: through the optimizer's own batched step (step_copies: the
    LSTM's, adam_mlp's) and through vmap, which every other learned optimizer uses."""
    torch.manual_seed(0)
    net = make().double()
    if per_call:
        monkeypatch.setattr(evolution, "COORDINATES_PER_CALL", per_call)
        monkeypatch.setattr(net, "coordinates_per_call", per_call, raising=False)
    stepper = ParticleStep(net)
    assert stepper.copies is not None
    if not batched:
        stepper.copies = None
    copies, coordinates = 7, 6
    flat = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    weights = flat + 0.1 * torch.randn(copies, flat.numel(), dtype=torch.float64)
    grads = torch.randn(copies, coordinates, dtype=torch.float64)
    calls = []
    step = stepper._step
    stepper._step = lambda *a: calls.append(1) or step(*a)
    state = stepper.init_state(torch.zeros(copies, coordinates, dtype=torch.float64))
    for t in range(3):
        updates, state = stepper(weights, grads * 10.0 ** -t, state, t)
    assert len(calls) == (3 if per_call is None else 3 * math.ceil(copies / (per_call // coordinates)))
    module = evolution._Stepper(net)
    for m in range(copies):
        rows = evolution.unflatten_rows(weights[m: m + 1], stepper.names, stepper.shapes)
        params = {name: value[0] for name, value in rows.items()}
        own = net.init_state(grads[m: m + 1])
        for t in range(3):
            update, own = functional_call(module, params, (grads[m: m + 1] * 10.0 ** -t, own, t))
        torch.testing.assert_close(updates[m], update[0])


def test_es_and_pes_run_eagerly_and_say_so_when_compile_is_asked_for(tmp_path, caplog):

    cfg = QuadraticConfig(dim=3)
    plans = {estimator: plan_training(family=QuadraticFamily(cfg), optimizee=cfg, optimizer=LSTMConfig(),
                                      schedule=TruncatedScheduleConfig(), loop=TrainLoopConfig(),
                                      estimator=ESTIMATORS.get(estimator).default_config(),
                                      seed=0, data_seed=0, device=torch.device("cpu"), out_dir=tmp_path, compile=True)
             for estimator in ("tbptt", "pes")}
    assert plans["tbptt"].compile is True and plans["pes"].compile is False
    assert "compile=true applies to estimators that backpropagate; estimator=pes runs eagerly" in caplog.text
