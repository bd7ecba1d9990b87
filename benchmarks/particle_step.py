"""The learned step of es / pes's perturbed copies, each copy with its own weights, three ways in one run: vmap over
the module call (what every learned optimizer without ``step_copies`` uses), the LSTM's own batched step
(``CoordinatewiseLSTM.step_copies``: one batched matmul per layer, the default for the LSTM), and that step under
torch.compile. Sizes: the default MNIST es (5 copies of 15910 coordinates) and quadratic es (640 copies of 10).

Usage: python benchmarks/particle_step.py [--steps N] [--threads T] [--profile ROWS]
(--profile: torch.profiler's top operators of each way on the MNIST size, instead of the timings)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + sys.path[1:]

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from l2l_cli.meta.estimators.perturbed import ParticleStep  # noqa: E402
from l2l_cli.optimizers.learned.lstm import CoordinatewiseLSTM, LSTMConfig  # noqa: E402

SIZES = {"mnist es": (5, 15910), "quadratic es": (640, 10)}


def stepper(net, mode: str) -> ParticleStep:
    step = ParticleStep(net)
    if mode == "vmap":
        step.copies = None
    elif mode == "compiled":
        compiled = torch.compile(lambda w, g, s: net.step_copies(w, g, s), dynamic=False)  # t unused: no recompiles
        step.copies = lambda w, g, s, t: compiled(w, g, s)
    return step


@torch.no_grad()
def seconds_per_step(step: ParticleStep, weights, grad, steps: int) -> float:
    state = step.init_state(torch.zeros_like(grad))
    for t in range(3):
        step(weights, grad, state, t)
    start = time.perf_counter()
    for t in range(steps):
        _, state = step(weights, grad, state, t)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = CoordinatewiseLSTM(LSTMConfig())
    flat = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    hidden, features = net.hidden_size, 2
    # forward FLOPs per coordinate: two layers' [x; h] -> 4H products and the head
    per_coordinate = 2 * ((features + hidden) * 4 * hidden + 2 * hidden * 4 * hidden + hidden)
    for label, (copies, coordinates) in SIZES.items():
        weights = flat + 0.01 * torch.randn(copies, flat.numel())
        grad = torch.randn(copies, coordinates) * 1e-3
        if args.profile:
            if label == "mnist es":
                print_profiles(net, weights, grad, args.profile)
            continue
        for mode in ("vmap", "copies", "compiled"):
            seconds = seconds_per_step(stepper(net, mode), weights, grad, args.steps)
            print(f"{label} ({copies} x {coordinates}) {mode:8s}: {seconds * 1e3:6.2f} ms per step, "
                  f"{per_coordinate * copies * coordinates / seconds / 1e9:5.1f} GFLOP/s", flush=True)


@torch.no_grad()
def print_profiles(net, weights, grad, rows: int) -> None:
    for mode in ("vmap", "copies"):
        step = stepper(net, mode)
        state = step.init_state(torch.zeros_like(grad))
        for t in range(3):
            _, state = step(weights, grad, state, t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for t in range(5):
                _, state = step(weights, grad, state, t)
        print(f"\n=== {mode}: 5 steps of {weights.shape[0]} copies x {grad.shape[1]} coordinates ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


if __name__ == "__main__":
    main()
