import pytest
import torch

from l2l_cli.optimizers.lstm import CoordinatewiseLSTM, LearnedRule


def _run(net, grads_seq):
    state = net.initial_state(grads_seq[0].numel())
    updates = []
    for g in grads_seq:
        u, state = net(g, state)
        updates.append(u)
    return torch.stack(updates)


def test_permuting_coordinates_permutes_updates():
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(hidden_size=8)
    grads = [torch.randn(50) for _ in range(4)]
    perm = torch.randperm(50)
    plain = _run(net, grads)
    permuted = _run(net, [g[perm] for g in grads])
    torch.testing.assert_close(permuted, plain[:, perm])


def test_batch_of_functions_equals_separate_runs():
    torch.manual_seed(1)
    net = CoordinatewiseLSTM(hidden_size=8, preprocess="none", output_scale=1.0)
    rule = LearnedRule(net)
    grads = [torch.randn(3, 5) for _ in range(4)]
    theta = torch.zeros(3, 5)
    state = rule.init_state(theta)
    together = []
    for t, g in enumerate(grads):
        u, state = rule.step(g, state, t)
        together.append(u)
    for b in range(3):
        state = rule.init_state(theta[b:b + 1])
        for t, g in enumerate(grads):
            u, state = rule.step(g[b:b + 1], state, t)
            torch.testing.assert_close(u[0], together[t][b])


def test_state_is_per_coordinate():
    net = CoordinatewiseLSTM(hidden_size=6, layers=3)
    state = net.initial_state(11)
    assert len(state) == 3 and all(h.shape == (11, 6) and c.shape == (11, 6) for h, c in state)


@pytest.mark.parametrize("n", [30, 14, 5])
def test_chunked_evaluation_step_equals_one_call(n):
    """Fixed-size overlapping chunks and double-buffered state give the single-call result."""
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(hidden_size=6)
    chunked, whole = LearnedRule(net, chunk=7), LearnedRule(net, chunk=10**9)
    theta = torch.zeros(2, n)  # 2n coordinates: 60, 28 (a multiple of 7) and 10 (two chunks that overlap)
    states = [rule.init_state(theta) for rule in (chunked, whole)]
    with torch.no_grad():
        for t in range(5):
            grad = torch.randn(theta.shape) * 10.0 ** -t
            (u1, states[0]), (u2, states[1]) = chunked.step(grad, states[0], t), whole.step(grad, states[1], t)
            torch.testing.assert_close(u1, u2)  # to rounding: a matmul on fewer rows may sum in another order
            for (h1, c1), (h2, c2) in zip(states[0], states[1], strict=True):
                torch.testing.assert_close((h1, c1), (h2, c2))
