"""What step size a learned optimizer takes on each kind of problem, and what final loss it reaches.

    python examples/step_size_probe.py CHECKPOINT [CHECKPOINT ...]
    python examples/step_size_probe.py --untrained '{"adapt_range": 3.0, "adapt_rate": 0.05}'

For each checkpoint (or an untrained adam_mlp with the given config), on 16 validation functions of 200 steps of
four of experiment=general's members, prints the median over functions of |update| / |Adam's direction| (the RMS of
the update over the RMS of m_hat / (sqrt(v_hat) + eps) at Adam's betas: the step size it uses, in Adam's learning
rate units) at a few steps, and the mean final loss (the validation figure of meta-training). The
diagnostic behind docs/experiments/general.md: a meta-trained optimizer that takes the same step size on every
member has learned one learning rate, not a rule.
"""

from __future__ import annotations

import argparse
import json

import torch

from l2l_cli.core.checkpoints import load_checkpoint
from l2l_cli.optimizees import build_family, family_config, loss_and_grad
from l2l_cli.optimizees.base import held_out_problems
from l2l_cli.optimizers.learned.adam_mlp import AdamMLP, AdamMLPConfig
from l2l_cli.optimizers.learned.base import bind_to_family
from l2l_cli.optimizers.learned.loading import rebuild_learned

MEMBERS = {"mlp_relu_2x32": {"name": "mnist", "hidden": 32, "layers": 2, "activation": "relu"},
           "quadratic_10": {"name": "quadratic", "dim": 10},
           "mlp_sigmoid": {"name": "mnist", "hidden": 20},
           "mlp_tanh_10": {"name": "mnist", "hidden": 10, "activation": "tanh"}}
STEPS, FUNCTIONS, SHOWN = 200, 16, (0, 25, 50, 100, 150, 199)


@torch.no_grad()
def probe(net, spec: dict):
    family = build_family(family_config(spec, "probe"))
    problem = held_out_problems(family, FUNCTIONS, STEPS, 0, "validation")
    theta = family.initial_params(problem)
    bind_to_family(net, family, problem, STEPS)
    state, m, v = net.init_state(theta), torch.zeros_like(theta), torch.zeros_like(theta)
    losses, grad = loss_and_grad(family, problem, theta, 0)
    sizes = []
    for t in range(STEPS):
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad * grad
        adam = (m / (1 - 0.9 ** (t + 1))) / ((v / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8)
        update, state = net.step(grad, state, t)
        sizes.append(float((update.square().mean(1).sqrt() / adam.square().mean(1).sqrt()).median()))
        theta = theta + update
        losses, grad = loss_and_grad(family, problem, theta, t + 1)
    return [sizes[t] for t in SHOWN], float(family.expected_loss(problem, theta).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*")
    parser.add_argument("--untrained", action="append", default=[], help="an adam_mlp config as JSON")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nets = {path: rebuild_learned(load_checkpoint(path), path) for path in args.checkpoints}
    for spec in args.untrained:
        torch.manual_seed(0)
        nets[f"untrained adam_mlp {spec}"] = AdamMLP(AdamMLPConfig(**json.loads(spec)))
    print(f"| optimizer | member | step size at steps {', '.join(map(str, SHOWN))} | mean final loss |")
    print("| --- | --- | --- | --- |")
    for name, net in nets.items():
        for member, spec in MEMBERS.items():
            sizes, final = probe(net.eval(), spec)
            print(f"| {name} | {member} | {', '.join(f'{s:.3g}' for s in sizes)} | {final:.4g} |")


if __name__ == "__main__":
    main()
