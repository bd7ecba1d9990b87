"""What step size a learned optimizer takes on each kind of problem, and what final loss it reaches.

    python examples/step_size_probe.py CHECKPOINT [CHECKPOINT ...]
    python examples/step_size_probe.py --untrained '{"adapt_range": 3.0, "adapt_rate": 0.05}'
    python examples/step_size_probe.py CHECKPOINT --steps 1000 --members mlp_sigmoid [--no-stretch]

For each checkpoint (or an untrained adam_mlp with the given config), on 16 validation functions of 200 steps (or
--steps) of four of experiment=general's members (or --members), prints the median over functions of |update| /
|Adam's direction| (the RMS of the update over the RMS of m_hat / (sqrt(v_hat) + eps) at Adam's betas: the step
size it uses, in Adam's learning rate units) at a few steps, the mean final loss (the validation figure of
meta-training) and how many runs blew up (ended above 100x the lowest minibatch loss they had reached). The
diagnostics behind docs/experiments/general.md: a meta-trained optimizer that takes the same step size on every
member has learned one learning rate, not a rule; one whose step keeps growing past its training horizon blows up
there (--no-stretch: adam_mlp's step-size state at its per-step rate at every horizon, as before adapt_stretch).
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
STEPS, FUNCTIONS = 200, 16


def shown(steps: int) -> tuple:
    """The steps reported: the first, then 1/8, 1/4, 1/2 and 3/4 of the run, and the last."""
    return (0, steps // 8, steps // 4, steps // 2, 3 * steps // 4, steps - 1)


@torch.no_grad()
def probe(net, spec: dict, steps: int = STEPS):
    """(step sizes at ``shown(steps)``, mean final loss, runs that blew up: ended above 100x their lowest loss)."""
    family = build_family(family_config(spec, "probe"))
    problem = held_out_problems(family, FUNCTIONS, steps, 0, "validation")
    theta = family.initial_params(problem)
    bind_to_family(net, family, problem, steps)
    state, m, v = net.init_state(theta), torch.zeros_like(theta), torch.zeros_like(theta)
    losses, grad = loss_and_grad(family, problem, theta, 0)
    lowest = losses.detach().clone()
    sizes = []
    for t in range(steps):
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad * grad
        adam = (m / (1 - 0.9 ** (t + 1))) / ((v / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8)
        update, state = net.step(grad, state, t)
        sizes.append(float((update.square().mean(1).sqrt() / adam.square().mean(1).sqrt()).median()))
        theta = theta + update
        losses, grad = loss_and_grad(family, problem, theta, t + 1)
        lowest = torch.minimum(lowest, losses)
    final = family.expected_loss(problem, theta)
    return [sizes[t] for t in shown(steps)], float(final.mean()), int((final > 100 * lowest).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*")
    parser.add_argument("--untrained", action="append", default=[], help="an adam_mlp config as JSON")
    parser.add_argument("--steps", type=int, default=STEPS, help="run length (default 200, the training horizon)")
    parser.add_argument("--members", nargs="+", choices=sorted(MEMBERS), default=list(MEMBERS))
    parser.add_argument("--no-stretch", action="store_true", help="adam_mlp with adapt_stretch off")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nets = {path: rebuild_learned(load_checkpoint(path), path) for path in args.checkpoints}
    if args.no_stretch:
        for net in nets.values():
            net.config.adapt_stretch = False
    for spec in args.untrained:
        torch.manual_seed(0)
        config = {**json.loads(spec), **({"adapt_stretch": False} if args.no_stretch else {})}
        nets[f"untrained adam_mlp {spec}"] = AdamMLP(AdamMLPConfig(**config))
    print(f"| optimizer | member | step size at steps {', '.join(map(str, shown(args.steps)))} | mean final loss "
          f"| blew up (of {FUNCTIONS}) |")
    print("| --- | --- | --- | --- | --- |")
    for name, net in nets.items():
        for member in args.members:
            sizes, final, blown = probe(net.eval(), MEMBERS[member], args.steps)
            print(f"| {name} | {member} | {', '.join(f'{s:.3g}' for s in sizes)} | {final:.4g} | {blown} |")


if __name__ == "__main__":
    main()
