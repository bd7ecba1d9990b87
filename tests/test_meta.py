"""Meta-gradients (first- and second-order), meta-training progress, checkpoints and exact resume."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from l2l_cli.core.checkpoints import load_checkpoint
from l2l_cli.core.random_streams import generator
from l2l_cli.core.schemas import TrainLoopConfig
from l2l_cli.meta.estimators.es import ESConfig
from l2l_cli.meta.estimators.lstm_bptt import ManualBPTT
from l2l_cli.meta.estimators.objective import unroll_objective
from l2l_cli.meta.estimators.pes import PESConfig
from l2l_cli.meta.estimators.tbptt import TBPTTConfig, fast_path
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.meta.setup import TrainSetup
from l2l_cli.meta.stopping import StopRequested
from l2l_cli.meta.trainer import MetaTrainer, meta_lr_at
from l2l_cli.optimizees import build_family, loss_and_grad
from l2l_cli.optimizees.mnist import MLPConfig
from l2l_cli.optimizees.quadratic import QuadraticConfig, QuadraticFamily
from l2l_cli.optimizers.learned.lstm import CoordinatewiseLSTM, LSTMConfig


def _setup(tmp_path: Path, iterations=6, estimator=None, **loop) -> TrainSetup:
    loop_cfg = TrainLoopConfig(iterations=iterations, meta_lr=0.01, val_every=3, checkpoint_every=3,
                               val_functions=32, evaluate=False, **loop)
    return TrainSetup(family=QuadraticFamily(QuadraticConfig(dim=6)), optimizer=LSTMConfig(hidden_size=8),
                      schedule=TruncatedScheduleConfig(num_steps=20, unroll=5), loop=loop_cfg, batch_size=16,
                      seed=3, data_seed=0, device=torch.device("cpu"), out_dir=tmp_path,
                      **({"estimator": estimator} if estimator is not None else {}))


def _meta_grads(net, objective):
    net.zero_grad()
    objective.backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def _reference_objective(family, problem, net, steps, second_order, log=False):
    """Straightforward autograd through f at every step; the optimizee gradient detached unless second_order."""
    theta = family.initial_params(problem).requires_grad_()
    state = net.initial_state(theta.numel(), dtype=theta.dtype)
    objective = 0.0
    for t in range(steps):
        loss = family.loss(problem, theta, t).sum()
        (grad,) = torch.autograd.grad(loss, theta, create_graph=second_order)
        update, state = net((grad if second_order else grad.detach()).reshape(-1), state)
        theta = theta + update.view_as(theta)
        losses = family.loss(problem, theta, t + 1)
        objective = objective + (losses.log() if log else losses).mean()
    return objective


@pytest.fixture
def small_problem():
    torch.manual_seed(0)
    family = QuadraticFamily(QuadraticConfig(dim=4))
    problem = family.sample(3, 6, generator(0, "train"))
    problem.W, problem.y, problem.theta0 = problem.W.double(), problem.y.double(), problem.theta0.double()
    net = CoordinatewiseLSTM(LSTMConfig(hidden_size=6, preprocess="none", output_scale=0.3)).double()
    return family, problem, net


def _ours(family, problem, net, steps, second_order, weighting="uniform"):
    theta = family.initial_params(problem)
    if second_order:
        theta.requires_grad_()
    state = net.initial_state(theta.numel(), dtype=theta.dtype)
    _, grad = loss_and_grad(family, problem, theta, 0, create_graph=second_order)
    objective, *_ = unroll_objective(family, problem, net, theta, state, grad, 0, steps, second_order, weighting)
    return objective


@pytest.mark.parametrize("weighting", ["uniform", "log"])
def test_first_order_surrogate_equals_autograd_with_detached_gradients(small_problem, weighting):
    family, problem, net = small_problem
    ours = _meta_grads(net, _ours(family, problem, net, 5, second_order=False, weighting=weighting))
    reference = _meta_grads(net, _reference_objective(family, problem, net, 5, second_order=False,
                                                      log=weighting == "log"))
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    if weighting == "log":  # and it is a different meta-gradient from the uniform one
        uniform = _meta_grads(net, _ours(family, problem, net, 5, second_order=False))
        assert not torch.allclose(ours, uniform, rtol=1e-3)


def test_second_order_flows_through_optimizee_gradients(small_problem):
    family, problem, net = small_problem
    first = _meta_grads(net, _ours(family, problem, net, 5, second_order=False))
    second = _meta_grads(net, _ours(family, problem, net, 5, second_order=True))
    reference = _meta_grads(net, _reference_objective(family, problem, net, 5, second_order=True))
    torch.testing.assert_close(second, reference, rtol=1e-10, atol=1e-12)
    assert (second - first).abs().max() > 1e-6 * first.abs().max()  # the extra term is really there


def _started_run(family, problem, net, steps):
    """theta, LSTM state and gradient after `steps` steps, so an unroll starts from a non-zero state."""
    theta = family.initial_params(problem)
    state = net.initial_state(theta.numel(), dtype=theta.dtype)
    _, grad = loss_and_grad(family, problem, theta, 0)
    if steps:
        _, _, _, theta, state, grad = unroll_objective(family, problem, net, theta, state, grad, 0, steps, False,
                                                       "uniform")
    return theta.detach(), net.detach_state(state), grad


@pytest.mark.parametrize("weighting", ["uniform", "log", "last"])
@pytest.mark.parametrize("family_name,preprocess,layers", [("quadratic", "none", 2), ("quadratic", "paper", 1),
                                                           ("quadratic", "deepmind", 3), ("mlp", "paper", 2)])
def test_manual_bptt_equals_autograd(family_name, preprocess, layers, weighting):
    """The hand-written first-order BPTT gives autograd's meta-gradient and the same unroll (float64, to rounding),
    from a mid-run start (non-zero state carried in), for every weighting, depth and preprocessing, and on a family
    whose gradients come from autograd on minibatches (the step index must match). 7 steps: groups of GROUP=2 steps
    per call and a last group of one."""
    torch.manual_seed(0)
    if family_name == "mlp":
        family = build_family(MLPConfig(hidden=3, minibatch=8))
        problem = family.sample(2, 12, generator(0, "train"))
        net = CoordinatewiseLSTM(LSTMConfig(hidden_size=6, layers=layers, preprocess=preprocess))
    else:
        family = QuadraticFamily(QuadraticConfig(dim=4))
        problem = family.sample(3, 12, generator(0, "train"))
        problem.W, problem.y, problem.theta0 = problem.W.double(), problem.y.double(), problem.theta0.double()
        net = CoordinatewiseLSTM(LSTMConfig(hidden_size=6, layers=layers, preprocess=preprocess,
                                            output_scale=0.3)).double()
    theta, state, grad = _started_run(family, problem, net, 3)
    objective, loss_sum, final, theta_a, state_a, grad_a = unroll_objective(family, problem, net, theta, state, grad,
                                                                            3, 7, False, weighting)
    reference = _meta_grads(net, objective)
    result = ManualBPTT(net).unroll(family, problem, theta, state, grad, 3, 7, weighting)
    ours = torch.cat([g.flatten() for g in result.grads])
    exact = dict(rtol=1e-10, atol=1e-13) if family_name == "quadratic" else dict(rtol=1e-4, atol=1e-7)  # float32
    torch.testing.assert_close(ours, reference, **exact)
    assert ours.abs().max() > 0
    torch.testing.assert_close(result.loss_sum, loss_sum.detach(), **exact)
    for a, b in zip([result.final, result.theta, result.grad], [final, theta_a, grad_a], strict=True):
        torch.testing.assert_close(a, b.detach(), **exact)
    for (h, c), (h_a, c_a) in zip(result.state, state_a, strict=True):
        torch.testing.assert_close(h, h_a.detach(), **exact)
        torch.testing.assert_close(c, c_a.detach(), **exact)


def test_manual_bptt_rejects_other_networks():
    with pytest.raises(TypeError, match="CoordinatewiseLSTM"):
        ManualBPTT(torch.nn.Linear(2, 2))
    # registered for CoordinatewiseLSTM itself: a subclass may compute otherwise, so the trainer uses autograd
    subclass = type("Variant", (CoordinatewiseLSTM,), {})(LSTMConfig(hidden_size=4))
    assert isinstance(fast_path(CoordinatewiseLSTM(LSTMConfig(hidden_size=4)), False), ManualBPTT)
    assert fast_path(subclass, False) is None


def test_trainer_uses_manual_bptt_for_first_order_only(tmp_path):
    """bptt=manual and bptt=autograd train to the same weights (float rounding apart); second_order uses autograd
    whatever bptt says."""
    runs = {}
    for bptt, second_order in (("manual", False), ("autograd", False), ("manual", True), ("autograd", True)):
        trainer = MetaTrainer(_setup(tmp_path / f"{bptt}{second_order}", iterations=3,
                                     estimator=TBPTTConfig(bptt=bptt, second_order=second_order)))
        assert (trainer.estimator.manual is not None) == (bptt == "manual" and not second_order)
        trainer.fit()
        runs[bptt, second_order] = torch.cat([p.detach().flatten() for p in trainer.net.parameters()])
    torch.testing.assert_close(runs["manual", False], runs["autograd", False], rtol=1e-4, atol=1e-6)
    assert torch.equal(runs["manual", True], runs["autograd", True])
    assert not torch.allclose(runs["manual", True], runs["manual", False], rtol=1e-4, atol=1e-6)


def test_optimizer_input_carries_graph_only_with_second_order(small_problem, monkeypatch):
    family, problem, net = small_problem
    seen = []
    original = net.forward
    monkeypatch.setattr(net, "forward", lambda g, s: (seen.append(g.requires_grad), original(g, s))[1])
    _ours(family, problem, net, 3, second_order=False)
    assert seen == [False] * 3
    seen.clear()
    _ours(family, problem, net, 3, second_order=True)
    assert seen[1:] == [True, True]


def test_meta_training_lowers_validation_loss(tmp_path):
    setup = _setup(tmp_path, iterations=40)
    setup.loop.val_every = 40
    trainer = MetaTrainer(setup)
    before = trainer.validate()
    best = trainer.fit()
    assert best < 0.7 * before, (before, best)


@pytest.mark.parametrize("ema_decay", [0.0, 0.5])
def test_checkpoint_round_trip_reproduces_validation_loss(tmp_path, ema_decay):
    trainer = MetaTrainer(_setup(tmp_path, ema_decay=ema_decay))
    best = trainer.fit()
    payload = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert payload["best_val"] == best
    fresh = MetaTrainer(_setup(tmp_path / "other", ema_decay=ema_decay))
    assert fresh.validate() != best
    fresh.restore(payload, "best.pt")
    assert fresh.validate() == best
    # what `l2l eval` loads (payload["model"]) is what was validated: the average when it is on
    plain = MetaTrainer(_setup(tmp_path / "plain"))
    plain.net.load_state_dict(payload["model"])
    assert plain.validate() == best
    if ema_decay:
        trained = payload["trained_model"]
        assert any(not torch.equal(trained[k], payload["model"][k]) for k in trained)
        before = [p.detach().clone() for p in trainer.net.parameters()]
        trainer.validate()  # swaps the average in and the trained weights back
        assert all(torch.equal(a, p) for a, p in zip(before, trainer.net.parameters(), strict=True))


@pytest.mark.parametrize("loop", [{}, {"ema_decay": 0.7, "meta_lr_schedule": "cosine"}, {"estimator": ESConfig()},
                                  {"estimator": PESConfig(pairs=2)}])
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, loop):
    straight = MetaTrainer(_setup(tmp_path / "straight", iterations=6, **loop))
    straight.fit()
    first = MetaTrainer(_setup(tmp_path / "split", iterations=6, **loop))
    with pytest.raises(StopRequested):  # interrupted after iteration 3, as by a signal
        first.fit(should_stop=lambda: 15 if first.iteration == 3 else 0)
    second = MetaTrainer(_setup(tmp_path / "split", iterations=6, **loop))
    last = tmp_path / "split" / "checkpoints" / "last.pt"
    second.restore(load_checkpoint(last), last)
    assert second.iteration == 3
    second.fit()
    for (name, a), b in zip(straight.net.state_dict().items(), second.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert straight.history == second.history and straight.best_val == second.best_val


def test_cosine_meta_lr_is_a_function_of_the_iteration(tmp_path):
    setup = _setup(tmp_path, iterations=4, meta_lr_schedule="cosine", meta_lr_final=0.1)
    trainer = MetaTrainer(setup)
    lrs = [meta_lr_at(setup.loop, i) for i in range(5)]
    assert lrs[0] == setup.loop.meta_lr and abs(lrs[4] - 0.1 * setup.loop.meta_lr) < 1e-12
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    trainer.fit()
    assert trainer.meta_opt.param_groups[0]["lr"] == lrs[3]  # the last iteration (index 3) ran at lrs[3]


def test_compiled_step_matches_eager(tmp_path):
    eager = MetaTrainer(_setup(tmp_path / "eager", iterations=2))
    setup = _setup(tmp_path / "compiled", iterations=2)
    setup = replace(setup, compile=True)
    compiled = MetaTrainer(setup)
    assert type(compiled.net.forward).__name__ == "Compiled"
    manual = compiled.estimator.manual
    assert type(manual.forward).__name__ == type(manual.backward).__name__ == "Compiled"
    # one thread (as tests run): the quadratic's closed-form loss and gradient are folded into the compiled step
    assert type(compiled.estimator.manual.forward_loss).__name__ == "Compiled"
    eager.fit()
    compiled.fit()
    assert not (compiled.net.forward.failed or manual.forward_loss.failed or manual.backward.failed)
    for a, b in zip(eager.net.parameters(), compiled.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert compiled.best_val == pytest.approx(eager.best_val, rel=1e-3)


def test_closed_form_folding_is_for_one_thread_only():
    """On more threads inductor splits the quadratic's tiny per-function sums into OpenMP regions (2x slower).
    Eager, folding is the same operations in the same order: always on (so the equality tests above cover it)."""
    net = CoordinatewiseLSTM(LSTMConfig(hidden_size=4))
    torch.set_num_threads(2)
    assert ManualBPTT(net, compiled=True).forward_loss is None
    assert ManualBPTT(net, compiled=False).forward_loss is not None
    torch.set_num_threads(1)
    assert ManualBPTT(net, compiled=True).forward_loss is not None


def test_compile_falls_back_to_eager(tmp_path, monkeypatch, caplog):
    from l2l_cli.optimizers.learned import compiled as compiled_module

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no backend here")
        return run

    monkeypatch.setattr(compiled_module.torch, "compile", broken_compile)
    setup = _setup(tmp_path, iterations=2)
    setup = replace(setup, compile=True)
    trainer = MetaTrainer(setup)
    trainer.fit()
    assert trainer.net.forward.failed and trainer.estimator.manual.forward_loss.failed
    assert trainer.estimator.manual.backward.failed
    assert "continuing without it" in caplog.text
    monkeypatch.setattr(compiled_module, "compile_available", lambda: (False, "no C++ compiler"))
    assert compiled_module.maybe_compile(torch.nn.Linear(1, 1), True) is False
    assert compiled_module.should_compile(None, 1e12) is False and compiled_module.should_compile(True, 0) is True


def test_freed_memory_is_reused_without_page_faults():
    """keep_freed_memory (glibc): a 64 MB block malloc'ed again after free reuses the freed pages instead of faulting
    in a fresh mmap (~16k page faults per allocation without it). In a fresh process, as `l2l` calls it first."""
    import subprocess
    import sys

    code = ("import ctypes, resource\nfrom l2l_cli.core.environment import keep_freed_memory\n"
            "assert keep_freed_memory()\n"
            "libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p\n"
            "libc.free.argtypes = [ctypes.c_void_p]; faults = []\n"
            "for _ in range(3):\n"
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    p = libc.malloc(2**26); ctypes.memset(p, 1, 2**26); libc.free(p)\n"
            "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
            "print(faults[1] + faults[2])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) < 1000


def test_release_freed_memory_hands_kept_memory_back():
    """Between phases of a run, release_freed_memory returns what keep_freed_memory kept: a freed 256 MB block stays
    resident until the release, and is gone after it."""
    import subprocess
    import sys

    code = ("import ctypes, os; from l2l_cli.core.environment import keep_freed_memory, release_freed_memory\n"
            "assert keep_freed_memory(); libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p\n"
            "libc.free.argtypes = [ctypes.c_void_p]\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 2**20\n"
            "p = libc.malloc(2**28); ctypes.memset(p, 1, 2**28); libc.free(p); kept = rss()\n"
            "release_freed_memory(); print(kept, rss())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kept, released = map(int, out.stdout.split())
    assert kept - released > 200, (kept, released)  # MiB


def test_patience_stops_after_validations_without_a_new_best(tmp_path):
    """train.patience: after that many validations in a row with no new best, meta-training stops with last.pt
    written; resuming it does not start again."""
    setup = _setup(tmp_path, iterations=30, patience=2)
    setup = replace(setup, loop=replace(setup.loop, val_every=1, meta_lr=1e-30))  # a meta lr that moves nothing
    trainer = MetaTrainer(setup)
    trainer.fit()
    # iteration 1 is the first best (below inf); 2 and 3 only equal it
    assert trainer.iteration == 3 and trainer.best_iteration == 1 and trainer.patience_over
    last = tmp_path / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["iteration"] == 3
    again = MetaTrainer(setup)
    again.restore(load_checkpoint(last), last)
    again.fit()
    assert again.iteration == 3
    # a signal in the iteration patience ends: the message says resuming evaluates, and resuming trains no further
    signalled = MetaTrainer(replace(setup, out_dir=tmp_path / "signalled"))
    with pytest.raises(StopRequested, match="meta-training had finished: resume=true evaluates it"):
        signalled.fit(should_stop=lambda: 15 if signalled.iteration == 3 else 0)
    last = tmp_path / "signalled" / "checkpoints" / "last.pt"
    resumed = MetaTrainer(replace(setup, out_dir=tmp_path / "signalled"))
    resumed.restore(load_checkpoint(last), last)
    resumed.fit()
    assert resumed.iteration == 3 and resumed.patience_over
    unlimited = MetaTrainer(replace(setup, loop=replace(setup.loop, patience=0, iterations=5),
                                    out_dir=tmp_path / "unlimited"))
    unlimited.fit()
    assert unlimited.iteration == 5 and not unlimited.patience_over
