import torch
from torch import nn

from l2l_cli.optimizers.learned.lstm import CoordinatewiseLSTM, LSTMConfig


def _run(net, grads_seq):
    state = net.initial_state(grads_seq[0].numel())
    updates = []
    for g in grads_seq:
        u, state = net(g, state)
        updates.append(u)
    return torch.stack(updates)


def test_permuting_coordinates_permutes_updates():
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(LSTMConfig(hidden_size=8))
    grads = [torch.randn(50) for _ in range(4)]
    perm = torch.randperm(50)
    plain = _run(net, grads)
    permuted = _run(net, [g[perm] for g in grads])
    torch.testing.assert_close(permuted, plain[:, perm])


def test_batch_of_functions_equals_separate_runs():
    torch.manual_seed(1)
    net = CoordinatewiseLSTM(LSTMConfig(hidden_size=8, preprocess="none", output_scale=1.0))
    rule = net
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
    net = CoordinatewiseLSTM(LSTMConfig(hidden_size=6, layers=3))
    state = net.initial_state(11)
    assert len(state) == 3 and all(h.shape == (6, 11) and c.shape == (6, 11) for h, c in state)


def test_matches_torch_lstm_cells_per_coordinate():
    """The stacked LSTM equals torch.nn.LSTMCell layers (gate order i, f, g, o there; i, f, o, g here) applied to
    each coordinate as a batch row, followed by the linear head."""
    torch.manual_seed(0)
    H = 5
    net = CoordinatewiseLSTM(LSTMConfig(hidden_size=H, layers=2, preprocess="none", output_scale=0.5)).double()
    cells = []
    for weight, bias in zip(net.weights, net.biases, strict=True):
        in_size = weight.shape[0] - H
        cell = nn.LSTMCell(in_size, H).double()
        order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
        with torch.no_grad():
            cell.weight_ih.copy_(weight[:in_size].t()[order])
            cell.weight_hh.copy_(weight[in_size:].t()[order])
            cell.bias_ih.copy_(bias[order])
            cell.bias_hh.zero_()
        cells.append(cell)
    state = net.initial_state(7, dtype=torch.float64)
    ref = [(torch.zeros(7, H, dtype=torch.float64), torch.zeros(7, H, dtype=torch.float64)) for _ in cells]
    for _ in range(3):
        grad = torch.randn(7, dtype=torch.float64)
        update, state = net(grad, state)
        x = grad.unsqueeze(1)
        for i, cell in enumerate(cells):
            ref[i] = cell(x, ref[i])
            x = ref[i][0]
        torch.testing.assert_close(update, net.head(x).squeeze(1) * 0.5)
        for (h, c), (rh, rc) in zip(state, ref, strict=True):
            torch.testing.assert_close((h, c), (rh.t(), rc.t()))


def test_chunked_forward_equals_one_pass(monkeypatch):
    """Many coordinates go through in chunks (cache-sized gate matrices): the same updates, state and gradients as one
    pass over all of them, including a last partial chunk."""
    from l2l_cli.optimizers.learned import lstm as lstm_module

    torch.manual_seed(0)
    net = CoordinatewiseLSTM(LSTMConfig(hidden_size=5, layers=2)).double()
    n = 2 * lstm_module.CHUNK + 123
    grads = [torch.randn(n, dtype=torch.float64) * 10.0 ** -k for k in range(3)]

    def run():
        net.zero_grad()
        state = net.initial_state(n, dtype=torch.float64)
        updates = []
        for g in grads:
            update, state = net(g, state)
            updates.append(update)
        torch.stack(updates).pow(2).sum().backward()
        return updates, state, [p.grad.clone() for p in net.parameters()]

    chunked = run()
    monkeypatch.setattr(lstm_module, "CHUNK", n)
    whole = run()
    for a, b in zip(chunked[0], whole[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    for (h, c), (h1, c1) in zip(chunked[1], whole[1], strict=True):
        torch.testing.assert_close(h, h1, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(c, c1, rtol=1e-12, atol=1e-15)
    for a, b in zip(chunked[2], whole[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
