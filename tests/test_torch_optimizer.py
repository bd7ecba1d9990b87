"""`l2l_cli.LearnedOptimizer`: a trained learned optimizer as a torch.optim.Optimizer on any nn.Module."""

from __future__ import annotations

import copy
import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2l_cli import LearnedOptimizer
from l2l_cli.core.checkpoints import CheckpointError, save_checkpoint
from l2l_cli.core.random_streams import generator
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import LearnedOptimizerConfig
from l2l_cli.optimizees import loss_and_grad
from l2l_cli.optimizees.mnist import MLPConfig, MLPFamily
from l2l_cli.optimizers.learned import build_learned
from l2l_cli.optimizers.learned.base import LearnedRule, bind_to_family
from l2l_cli.optimizers.learned.lstm import LSTMConfig

COORDINATEWISE = [n for n in OPTIMIZERS.learned() if getattr(OPTIMIZERS.get(n).build, "coordinatewise", False)]


def checkpoint_of(net, tmp_path, name="opt.pt"):
    return save_checkpoint({"optimizer": dataclasses.asdict(net.config), "model": net.state_dict(), "iteration": 0,
                            "best_val": 0.0, "history": [[0, 1.0]]}, tmp_path / name)


def trained_like(name: str):
    """A learned optimizer with random (not zero-like) weights, so updates are far from trivial."""
    torch.manual_seed(1)
    net = build_learned(OPTIMIZERS.get(name).example_config())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return net


def mlp_module(family: MLPFamily, theta: torch.Tensor) -> nn.Sequential:
    """nn.Linear layers holding the family's flat parameters of one function (weights (in, out) -> (out, in))."""
    layers = []
    for k, (w, b) in enumerate(family.unflatten(theta)):
        linear = nn.Linear(w.shape[1], w.shape[2]).to(theta.dtype)
        with torch.no_grad():
            linear.weight.copy_(w[0].t())
            linear.bias.copy_(b[0, 0])
        layers += [linear] + ([nn.Sigmoid()] if k < len(family.shapes) - 1 else [])
    return nn.Sequential(*layers)


def flat_of(module: nn.Sequential) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for layer in module if isinstance(layer, nn.Linear)
                      for t in (layer.weight.t(), layer.bias)])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
@pytest.mark.parametrize("name", COORDINATEWISE)
def test_updates_equal_what_l2l_eval_computes(tmp_path, name, device):
    """The MNIST optimizee as an nn.Module trained by LearnedOptimizer follows, in float64, the trajectory that the
    evaluation's rollout computes for the same function and checkpoint."""
    family = MLPFamily(MLPConfig(hidden=6))
    problem = family.sample(1, 12, generator(0, "test"), split="test")
    problem = dataclasses.replace(problem, theta0=problem.theta0.double(), images=problem.images.double())
    net = trained_like(name)
    path = checkpoint_of(net, tmp_path)
    reference = copy.deepcopy(net).double().eval()
    bind_to_family(reference, family, problem)  # as the rollout does: the family's tensors, no horizon given
    theta = family.initial_params(problem)
    model = mlp_module(family, theta).to(device)
    opt = LearnedOptimizer(model.parameters(), checkpoint=path)
    state = reference.init_state(theta)
    with torch.no_grad():
        for t in range(12):
            _, grad = loss_and_grad(family, problem, theta, t)
            update, state = reference.step(grad, state, t)
            theta = theta + update
    images, labels = problem.images.to(device), problem.labels.to(device)
    for t in range(12):
        opt.zero_grad()
        idx = problem.batches[t, 0].to(device)
        F.cross_entropy(model(images[idx]), labels[idx]).backward()
        opt.step()
    assert (theta - problem.theta0).abs().max() > 1e-3  # it moved
    torch.testing.assert_close(flat_of(model).cpu(), theta[0], rtol=1e-9, atol=1e-11)


def small_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def train(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen, dtype=next(model.parameters()).dtype)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def test_state_dict_round_trip_continues_exactly(tmp_path):
    path = checkpoint_of(trained_like("lstm"), tmp_path)
    model = small_model()
    opt = LearnedOptimizer(model.parameters(), checkpoint=path)
    train(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # loadable without pickled code, like any torch checkpoint
    resumed = small_model(seed=5)
    resumed.load_state_dict(saved["model"])
    opt2 = LearnedOptimizer(resumed.parameters(), checkpoint=path)
    opt2.load_state_dict(saved["opt"])
    train(model, opt, 4, seed=1)
    train(resumed, opt2, 4, seed=1)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a fresh optimizer (state lost) would not continue the same way
    fresh = copy.deepcopy(resumed)
    train(fresh, LearnedOptimizer(fresh.parameters(), checkpoint=path), 1, seed=2)
    train(resumed, opt2, 1, seed=2)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), resumed.parameters(), strict=True))


def test_parameters_without_gradients_are_skipped_and_join_later(tmp_path):
    """A frozen parameter neither moves nor gets state; the others step exactly as without it; once it has
    gradients it starts from a fresh state while the others keep theirs."""
    path = checkpoint_of(trained_like("lstm"), tmp_path)
    model, alone = small_model(), small_model()
    model[2].bias.requires_grad_(False)
    frozen_before = model[2].bias.detach().clone()
    opt = LearnedOptimizer(model.parameters(), checkpoint=path)
    opt_alone = LearnedOptimizer([p for name, p in alone.named_parameters() if name != "2.bias"], checkpoint=path)
    train(model, opt, 3)
    train(alone, opt_alone, 3)
    assert torch.equal(model[2].bias, frozen_before) and model[2].bias not in opt.state
    for (name, a), b in zip(model.named_parameters(), alone.parameters(), strict=True):
        if name != "2.bias":
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    model[2].bias.requires_grad_(True)
    train(model, opt, 2, seed=3)
    assert not torch.equal(model[2].bias, frozen_before)
    steps = {n: int(opt.state_dict()["state"][k]["step"]) for k, (n, _) in enumerate(model.named_parameters())}
    assert steps == {"0.weight": 5, "0.bias": 5, "2.weight": 5, "2.bias": 2}


def test_param_groups_lr_and_schedulers(tmp_path):
    """Each group's lr multiplies the learned update: 0 freezes it; a scheduler changes it like any optimizer's."""
    path = checkpoint_of(trained_like("lstm"), tmp_path)
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = LearnedOptimizer([{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters()}],
                           checkpoint=path)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, opt, 1)
    scheduler.step()
    assert opt.param_groups[1]["lr"] == 0.5
    assert torch.equal(model[0].weight, before[0]) and not torch.equal(model[2].weight, before[2])


def test_closure_and_float64(tmp_path):
    path = checkpoint_of(trained_like("lstm"), tmp_path)
    model = small_model(dtype=torch.float64)
    opt = LearnedOptimizer(model.parameters(), checkpoint=path)
    x = torch.randn(8, 4, dtype=torch.float64)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    first = opt.step(closure)
    assert isinstance(first, torch.Tensor) and all(p.dtype == torch.float64 for p in model.parameters())
    assert all(leaf.dtype == torch.float64 for leaf in opt.state_dict()["state"][0]["learned_state"])


def test_foreign_and_mismatched_checkpoints_fail_with_one_line(tmp_path):
    model = small_model()
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    with pytest.raises(CheckpointError, match=r"junk.pt: not an l2l checkpoint"):
        LearnedOptimizer(model.parameters(), checkpoint=junk)
    with pytest.raises(CheckpointError, match=r"pretrained:nope: no such pretrained optimizer, allowed values"):
        LearnedOptimizer(model.parameters(), checkpoint="pretrained:nope")
    twenty = LearnedOptimizer(model.parameters(), checkpoint=checkpoint_of(trained_like("lstm"), tmp_path))
    train(model, twenty, 1)
    torch.manual_seed(0)
    ten = build_learned(LSTMConfig(hidden_size=10))
    other = LearnedOptimizer(model.parameters(), checkpoint=checkpoint_of(ten, tmp_path, "ten.pt"))
    with pytest.raises(ValueError, match=r"load_state_dict: this state is from learned optimizer .*'hidden_size': 20"):
        other.load_state_dict(twenty.state_dict())


@dataclasses.dataclass
class MeanConfig(LearnedOptimizerConfig):
    name: str = "test_global_mean"


class GlobalMean(LearnedRule):
    """Not coordinatewise: every coordinate's update uses the optimizee's mean gradient."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.scale = nn.Parameter(torch.tensor(0.1))

    def init_state(self, theta):
        return []

    def step(self, grad, state, t=0):
        return -self.scale * grad.mean(dim=1, keepdim=True).expand_as(grad), state


def test_an_architecture_that_is_not_coordinatewise_is_refused(tmp_path):
    OPTIMIZERS.register("test_global_mean", MeanConfig, GlobalMean, learned=True)
    try:
        path = checkpoint_of(GlobalMean(MeanConfig()), tmp_path)
        with pytest.raises(CheckpointError, match=r"'test_global_mean' shares information between coordinates"):
            LearnedOptimizer(small_model().parameters(), checkpoint=path)
    finally:
        OPTIMIZERS.unregister("test_global_mean")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm", "adam_mlp"])
def test_compile_gives_the_same_steps(tmp_path, name):
    """compile=True: the same updates to float32 rounding (its tanh is computed as 2 / (1 + e^-2x) - 1; adam_mlp's
    MLP, compiled, is written unit by unit)."""
    path = checkpoint_of(trained_like(name), tmp_path)
    eager, compiled = small_model(), small_model()
    train(eager, LearnedOptimizer(eager.parameters(), checkpoint=path), 3)
    train(compiled, LearnedOptimizer(compiled.parameters(), checkpoint=path, compile=True), 3)
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
