"""The cost of one evaluation-time (no-grad) learned step relative to one Adam step on the same MNIST optimizee
batch, next to the lower bound that arithmetic sets for that ratio, and the learned step's fraction of matmul
FLOP/s; eager and compiled (evaluation runs in one process)."""

from __future__ import annotations

import statistics
import time
from typing import Iterator

import torch

from benchmarks.flops import ADAM_FLOPS_PER_PARAMETER, lstm_forward_flops, mlp_forward_backward_flops
from benchmarks.harness import blocks_of, summarise, sync
from benchmarks.registry import Benchmark, Result, register
from l2l_cli.optimizees import build_family, loss_and_grad
from l2l_cli.optimizees.base import held_out_problems
from l2l_cli.optimizees.mnist import MLPConfig
from l2l_cli.optimizers.baselines import baseline_config, build_baseline
from l2l_cli.optimizers.learned import build_learned
from l2l_cli.optimizers.learned.compiled import maybe_compile
from l2l_cli.optimizers.learned.lstm import LSTMConfig

MODES = ("eager", "compiled")


def rules(device, compiled: bool) -> dict:
    """The default LSTM (its step costs the same whatever the weights) and Adam."""
    torch.manual_seed(0)
    net = build_learned(LSTMConfig()).to(device).eval()
    maybe_compile(net, compiled)
    return {"lstm": net, "adam": build_baseline(baseline_config("adam"), 0.03)}


class Runs:
    """Each rule's own optimizee run on the same batch, continued from call to call."""

    def __init__(self, family, problem, rules: dict, device):
        self.family, self.problem, self.rules, self.device = family, problem, rules, device
        self.runs = {name: [family.initial_params(problem), None, 0] for name in rules}  # theta, state, step

    def steps(self, name: str, n: int) -> float:
        """Seconds per optimizee step (loss + gradient + update) over the next `n` steps of the rule's run."""
        theta, state, first = self.runs[name]
        rule = self.rules[name]
        state = rule.init_state(theta) if state is None else state
        sync(self.device)
        start = time.perf_counter()
        for t in range(first, first + n):
            _, grad = loss_and_grad(self.family, self.problem, theta, t)
            update, state = rule.step(grad, state, t)
            theta = theta + update
        sync(self.device)
        self.runs[name] = [theta, state, first + n]
        return (time.perf_counter() - start) / n


@torch.no_grad()
def measure(device, compiled: bool, blocks: int, functions: int = 8, repeats: int = 10) -> dict:
    """One optimizee step (loss + gradient + update) with the learned rule vs with Adam, same MNIST batch."""
    cfg = MLPConfig()
    family = build_family(cfg)
    problem = held_out_problems(family, functions, 5 + blocks * repeats, 0, "test", device)
    runs = Runs(family, problem, rules(device, compiled), device)
    for name in runs.rules:
        runs.steps(name, 5)  # warm-up (and compilation)
    measured = blocks_of(lambda: (runs.steps("lstm", repeats), runs.steps("adam", repeats)), blocks, device)
    return figures_of(cfg, family, functions, measured)


def figures_of(cfg: MLPConfig, family, functions: int, measured: list) -> dict:
    params = family.num_params * functions
    weights = sum(a * b for (a, b), _ in family.shapes)
    optimizee = mlp_forward_backward_flops(cfg, weights) * functions
    learned = optimizee + lstm_forward_flops(LSTMConfig()) * params
    adam = optimizee + ADAM_FLOPS_PER_PARAMETER * params
    best, figures = summarise([(lstm, peak) for (lstm, _), peak in measured], learned)
    del figures["seconds"]
    lstm_s, adam_s = measured[best][0]
    ratios = [lstm / adam_ for (lstm, adam_), _ in measured]
    return {"functions": functions, "coordinates": params, "lstm_step_seconds": lstm_s, "adam_step_seconds": adam_s,
            "lstm_over_adam": lstm_s / adam_s, "lstm_over_adam_median": statistics.median(ratios),
            "arithmetic_lower_bound": learned / adam, "within_factor_of_bound": lstm_s / adam_s / (learned / adam),
            "lstm_step_flops_per_second": learned / lstm_s, **figures}


@register
class LearnedStep(Benchmark):
    name = "learned_step"

    def selected(self, args, device) -> bool:
        return "mnist" in args.tasks

    def run(self, args, device) -> Iterator[Result]:
        for mode in (m for m in args.modes if m in MODES):
            yield mode, measure(device, mode == "compiled", args.blocks)

    def line(self, name: str, s: dict) -> str:
        return (f"eval step, MNIST x{s['functions']} {name:8s}: learned {s['lstm_step_seconds'] * 1e3:.1f} ms vs "
                f"Adam {s['adam_step_seconds'] * 1e3:.2f} ms = {s['lstm_over_adam']:.1f}x "
                f"({s['lstm_over_adam_median']:.1f}x) (arithmetic bound {s['arithmetic_lower_bound']:.1f}x, "
                f"{s['within_factor_of_bound']:.2f}x of it); {100 * s['fraction_of_matmul']:.1f}% "
                f"({100 * s['fraction_of_matmul_median']:.1f}%) of matmul")
