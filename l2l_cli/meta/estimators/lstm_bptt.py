"""First-order meta-gradients of the coordinatewise LSTM written out by hand: no autograd graph over the unroll.

Without second derivatives the gradient g_t fed to the LSTM is a constant and theta_{t+1} = theta_t + u_t, so the
meta-objective J = sum_t sum_b c_tb f_b(theta_t) (c: the weighting's per-function coefficients) has

    dJ / du_k = sum_{t > k} c_t g_t,

a reverse running sum of gradients the unroll computes anyway. What is left is plain BPTT through the LSTM with
known output gradients. Written out, the forward keeps only what the backward reads (~300 floats per coordinate
per step for the default 2 x 20 LSTM, not autograd's whole graph), the forward and the backward of each group of
GROUP steps are one function each (compiled into a few fused kernels when compile is on; for a stationary family
with a closed-form gradient the forward includes the optimizee's loss and gradient), and each layer's weight
gradient grows by one matmul over all coordinates per step. ``objective.unroll_objective`` computes the same
meta-gradient with autograd; tests compare the two. Registered as CoordinatewiseLSTM's fast path under tbptt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from l2l_cli.meta.estimators.objective import step_weights
from l2l_cli.meta.estimators.tbptt import register_fast_path
from l2l_cli.optimizees.base import Family, loss_and_grad
from l2l_cli.optimizers.learned.compiled import Compiled
from l2l_cli.optimizers.learned.lstm import CoordinatewiseLSTM, State, lstm_step


def forward_step(weights: List[torch.Tensor], biases: List[torch.Tensor], head_w, head_b, theta, grad, state: State,
                 kind: str, p: float, scale: float, hidden: int):
    """theta_{t+1} = theta_t + LSTM(g_t), and per layer what its backward needs: ([x; h], ifo, g, c_prev, tanh c)."""
    update, saved, new_state = lstm_step(weights, biases, head_w, head_b, grad.reshape(-1), state, kind, p, scale,
                                         hidden)
    return theta + update.view_as(theta), saved, new_state


def forward_loss_steps(weights: List[torch.Tensor], biases: List[torch.Tensor], head_w, head_b, theta, grad,
                       state: State, kind: str, p: float, scale: float, hidden: int, family: Family, problem,
                       count: int):
    """``count`` times forward_step and then the loss and gradient at the new theta, for a stationary family with a
    closed-form gradient (its step argument does not matter). Compiled, one call instead of a compiled call and ~10
    eager operations per step. Returns theta, state, grad after the last step and per step
    (saved, h of the top layer, losses, grad)."""
    steps = []
    for _ in range(count):
        theta, saved, state = forward_step(weights, biases, head_w, head_b, theta, grad, state, kind, p, scale,
                                           hidden)
        losses, grad = family.analytic_loss_and_grad(problem, theta, 0)
        steps.append((saved, state[-1][0], losses, grad))
    return theta, state, grad, steps


def backward_step(weights: List[torch.Tensor], head_w, saved, h_top, losses, grad, dtheta, dh: List[torch.Tensor],
                  dc: List[torch.Tensor], grads: List[torch.Tensor], weighting: str, last: bool, scale: float,
                  hidden: int):
    """One step of BPTT, latest step first.

    losses, grad: f and g at theta_{t+1}, for this step's own term c_t g. dtheta: dJ/dtheta_{t+1} from the later
    steps. dh, dc: per layer, the gradient carried back from step t+1 into h_t and c_t. grads: the running
    [dW_l..., db_l..., dhead_w, dhead_b].
    """
    H, L = hidden, len(weights)
    dtheta = dtheta + step_weights(losses, weighting, last).unsqueeze(1) * grad
    dupdate = dtheta.reshape(1, -1) * scale  # dJ/du_t, so through the output scale
    dW, db = list(grads[:L]), list(grads[L:2 * L])
    dhead_w = torch.addmm(grads[2 * L], dupdate, h_top.t())
    dhead_b = grads[2 * L + 1] + dupdate.sum(1)
    dx = head_w.t() * dupdate  # (H, N): the head is a (1, H) map
    new_dh, new_dc = list(dh), list(dc)
    for layer in reversed(range(L)):
        inp, ifo, g, c, tanh_c = saved[layer]
        i, f, o = ifo[:H], ifo[H:2 * H], ifo[2 * H:]
        dh_l = dx + dh[layer]
        dc_l = dc[layer] + dh_l * o * (1 - tanh_c * tanh_c)
        dgates = torch.cat((dc_l * g * i * (1 - i), dc_l * c * f * (1 - f), dh_l * tanh_c * o * (1 - o),
                            dc_l * i * (1 - g * g)), 0)
        dW[layer] = torch.addmm(dW[layer], inp, dgates.t())
        db[layer] = db[layer] + dgates.sum(1)
        n_in = inp.shape[0] - H
        # the first layer's input (the preprocessed gradient) is a constant: only its h rows need a gradient
        dinp = weights[layer] @ dgates if layer > 0 else weights[layer][n_in:] @ dgates
        new_dh[layer], new_dc[layer] = dinp[-H:], dc_l * f
        dx = dinp[:-H]
    return dtheta, new_dh, new_dc, dW + db + [dhead_w, dhead_b]


def backward_steps(weights: List[torch.Tensor], head_w, steps, dtheta, dh: List[torch.Tensor], dc: List[torch.Tensor],
                   grads: List[torch.Tensor], weighting: str, lasts: tuple, scale: float, hidden: int):
    """backward_step over a group of consecutive steps (as forward_loss_steps returns them), latest first; lasts[j]:
    whether steps[j] is the unroll's last step."""
    for (saved, h_top, losses, grad), last in zip(reversed(steps), reversed(lasts), strict=True):
        dtheta, dh, dc, grads = backward_step(weights, head_w, saved, h_top, losses, grad, dtheta, dh, dc, grads,
                                              weighting, last, scale, hidden)
    return dtheta, dh, dc, grads


# Steps per compiled call: each call pays a fixed dispatch cost (dynamo's guards, the compiled region's wrappers), and
# inside one graph the compiler fuses across the steps; more than two per call were no faster and compile longer
# (docs/performance.md).
GROUP = 2


@dataclass
class UnrollResult:
    grads: List[torch.Tensor]  # dJ/dphi in net.parameters() order
    loss_sum: torch.Tensor  # sum over the unroll's steps of the mean loss
    final: torch.Tensor  # per-function losses after the last step
    theta: torch.Tensor
    state: State
    grad: torch.Tensor  # the gradient at theta, input of the next step


class ManualBPTT:
    """The first-order meta-gradient of one unroll for ``net``, without autograd. ``compiled``: torch.compile the
    step functions (each falling back to eager if its compilation fails)."""

    def __init__(self, net: CoordinatewiseLSTM, compiled: bool = False):
        if type(net) is not CoordinatewiseLSTM:  # its math, written out below: a subclass may compute otherwise
            raise TypeError(f"ManualBPTT implements CoordinatewiseLSTM's backward, got {type(net).__name__}")
        self.net = net
        self.forward = Compiled(forward_step) if compiled else forward_step
        # folding the closed-form loss into the compiled step pays on one thread only: on more, inductor runs each
        # function's short sums of the quadratic's gradient as an OpenMP region of their own, which is slower.
        # Eager, folding changes nothing (the same operations), so always fold.
        fold = not compiled or torch.get_num_threads() == 1
        self.forward_loss = (Compiled(forward_loss_steps) if compiled else forward_loss_steps) if fold else None
        self.backward = Compiled(backward_steps) if compiled else backward_steps

    @torch.no_grad()
    def unroll(self, family: Family, problem, theta, state: State, grad, first_step: int, steps: int,
               weighting: str) -> UnrollResult:
        net, H = self.net, self.net.hidden_size
        weights = [w.detach() for w in net.weights]
        biases = [b.detach() for b in net.biases]
        head_w, head_b = net.head.weight.detach(), net.head.bias.detach()
        closed_form = (self.forward_loss is not None and getattr(family, "stationary", False)
                       and family.analytic_loss_and_grad(problem, theta, 0) is not None)
        lstm = (weights, biases, head_w, head_b)
        config = (net.preprocess_kind, net.preprocess_p, net.output_scale, H)
        groups = []  # per group of up to GROUP steps: [(saved, h of the top layer, losses, grad) per step]
        for start in range(0, steps, GROUP):
            count = min(GROUP, steps - start)
            if closed_form:
                theta, state, grad, group = self.forward_loss(*lstm, theta, grad, state, *config, family, problem,
                                                              count)
            else:
                group = []
                for k in range(start, start + count):
                    theta, saved, state = self.forward(*lstm, theta, grad, state, *config)
                    losses, grad = loss_and_grad(family, problem, theta, first_step + k + 1)
                    group.append((saved, state[-1][0], losses, grad))
            groups.append(group)
        losses = [step[2] for group in groups for step in group]
        n = theta.numel()
        dtheta = torch.zeros_like(theta)
        dh = [theta.new_zeros(H, n) for _ in weights]
        dc = [theta.new_zeros(H, n) for _ in weights]
        grads = [torch.zeros_like(p) for p in net.parameters()]
        for g in reversed(range(len(groups))):
            lasts = tuple(g * GROUP + j == steps - 1 for j in range(len(groups[g])))
            dtheta, dh, dc, grads = self.backward(weights, head_w, groups[g], dtheta, dh, dc, grads, weighting, lasts,
                                                  net.output_scale, H)
            groups[g] = None  # free the group's activations as soon as they are used
        loss_sum = torch.stack(losses).mean(dim=1).sum()
        return UnrollResult(grads, loss_sum, losses[-1], theta, state, grad)


register_fast_path(CoordinatewiseLSTM, ManualBPTT)
