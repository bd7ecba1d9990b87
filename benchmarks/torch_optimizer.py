"""``LearnedOptimizer.step()`` (a trained optimizer as a torch optimizer: the paper's LSTM and adam_mlp) against
``torch.optim.Adam.step()`` on a 784-20-10 MLP and a 784-1024-256-10 MLP (1.07M parameters), the arithmetic bound
of the learned step, its state and (on the CPU, in a fresh process) peak memory per parameter."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Iterator

import torch

from benchmarks.flops import learned_step_flops
from benchmarks.harness import RESULTS, blocks_of, child_figure, per_call, summarise
from benchmarks.registry import Benchmark, Result, register
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.learned import build_learned

TASK = "torch_optimizer"  # its name in --tasks
TORCH_MODELS = {"mlp_784_20_10": (784, 20, 10), "mlp_784_1024_256_10": (784, 1024, 256, 10)}  # 15,910 / 1.07M
# each as `optimizer=<name>` configures it (adam_mlp with its adaptive step): a step costs the same whatever the weights
ARCHITECTURES = {name: OPTIMIZERS.get(name).default_config for name in ("lstm", "adam_mlp")}
TOTAL_STEPS = 1000  # the training length adam_mlp is told (the fraction done is one of its features)


def torch_model(name: str, device) -> torch.nn.Module:
    sizes = TORCH_MODELS[name]
    layers = []
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [torch.nn.Linear(fan_in, fan_out)] + ([torch.nn.Sigmoid()] if k < len(sizes) - 2 else [])
    return torch.nn.Sequential(*layers).to(device)


def default_checkpoint(directory: Path, architecture: str = "lstm") -> Path:
    """A checkpoint of the architecture's default config (its step costs the same whatever the weights)."""
    from dataclasses import asdict

    from l2l_cli.core.checkpoints import save_checkpoint

    torch.manual_seed(0)
    net = build_learned(ARCHITECTURES[architecture]())
    return save_checkpoint({"optimizer": asdict(net.config), "model": net.state_dict(), "iteration": 0,
                            "best_val": 0.0}, directory / f"{architecture}_default.pt")


def optimizers_for(model: torch.nn.Module, architecture: str) -> dict:
    """The learned optimizer eager and compiled, and Adam, each at learning rate 0 (the weights stay as they are)."""
    from l2l_cli import LearnedOptimizer

    checkpoint = default_checkpoint(RESULTS, architecture)
    return {"learned": LearnedOptimizer(model.parameters(), checkpoint=checkpoint, lr=0.0, total_steps=TOTAL_STEPS),
            "compiled": LearnedOptimizer(model.parameters(), checkpoint=checkpoint, lr=0.0, compile=True,
                                         total_steps=TOTAL_STEPS),
            "adam": torch.optim.Adam(model.parameters(), lr=0.0)}


def measure(name: str, device, blocks: int, repeats: int = 5, architecture: str = "lstm") -> dict:
    """``LearnedOptimizer.step()`` against ``torch.optim.Adam.step()`` on the same model and gradients (the step
    alone: gradients are computed once), and the arithmetic bound: the learned step's FLOPs at matmul speed."""
    model = torch_model(name, device)
    model(torch.rand(128, 784, device=device)).square().mean().backward()
    optimizers = optimizers_for(model, architecture)

    def steps(opt_name: str) -> float:
        return per_call(optimizers[opt_name].step, repeats, device)

    for opt_name in optimizers:
        steps(opt_name)  # warm-up: states created, compilation
    measured = blocks_of(lambda: (steps("learned"), steps("compiled"), steps("adam")), blocks, device)
    params = sum(p.numel() for p in model.parameters())
    state = optimizers["learned"].state_dict()["state"]
    state_bytes = sum(leaf.numel() * leaf.element_size() for s in state.values() for leaf in s["learned_state"])
    return figures_of(name, params, measured, state_bytes, architecture)


def figures_of(name: str, params: int, measured: list, state_bytes: int, architecture: str = "lstm") -> dict:
    flops = learned_step_flops(ARCHITECTURES[architecture]()) * params
    best, figures = summarise([(learned, peak) for (learned, _, _), peak in measured], flops)
    learned_s, _, adam_s = measured[best][0]
    compiled_best = min(c for (_, c, _), _ in measured)
    return {"model": name, "architecture": architecture, "parameters": params, "learned_step_seconds": learned_s,
            "adam_step_seconds": adam_s,
            "learned_over_adam": learned_s / adam_s,
            "learned_over_adam_median": statistics.median(a / c for (a, _, c), _ in measured),
            "compiled_step_seconds": compiled_best, "compiled_over_adam": compiled_best / adam_s,
            "compiled_fraction_of_matmul": flops / compiled_best / figures["matmul_flops_per_second"],
            "bound_seconds": flops / figures["matmul_flops_per_second"],
            "state_bytes_per_parameter": state_bytes / params, "fraction_of_matmul": figures["fraction_of_matmul"],
            "fraction_of_matmul_median": figures["fraction_of_matmul_median"]}


def peak_bytes_per_parameter(name: str, threads: int | None, architecture: str = "lstm") -> float:
    """Bytes per parameter that creating a LearnedOptimizer and taking 3 steps add to a fresh process's peak RSS
    (its state, the state it replaces during a step, and the step's temporaries)."""
    code = ("from l2l_cli import LearnedOptimizer; from benchmarks.harness import RESULTS, peak_rss_mib;"
            "from benchmarks.torch_optimizer import default_checkpoint, torch_model;"
            "m = torch_model(sys.argv[2], 'cpu'); m(torch.rand(128, 784)).square().mean().backward();"
            f"ck = default_checkpoint(RESULTS, {architecture!r}); before = peak_rss_mib();\n"
            "opt = LearnedOptimizer(m.parameters(), checkpoint=ck); [opt.step() for _ in range(3)];"
            "n = sum(p.numel() for p in m.parameters()); print((peak_rss_mib() - before) * 2**20 / n)")
    return child_figure(code, threads, name)


@register
class TorchOptimizer(Benchmark):
    name = "torch_optimizer"
    always_written = False

    def selected(self, args, device) -> bool:
        return TASK in args.tasks

    def run(self, args, device) -> Iterator[Result]:
        for architecture in ARCHITECTURES:
            for name in TORCH_MODELS:
                s = measure(name, device, args.blocks, architecture=architecture)
                if not args.skip_memory and device.type == "cpu":
                    s["peak_bytes_per_parameter"] = peak_bytes_per_parameter(name, args.threads, architecture)
                yield name if architecture == "lstm" else f"{architecture}_{name}", s

    def line(self, name: str, s: dict) -> str:
        peak = (f", peak {s['peak_bytes_per_parameter']:.0f} bytes/parameter" if "peak_bytes_per_parameter" in s
                else "")
        return (f"LearnedOptimizer.step ({s.get('architecture', 'lstm')}), {s['model']} "
                f"({s['parameters']:,} parameters): "
                f"{s['learned_step_seconds'] * 1e3:.2f} ms vs Adam.step {s['adam_step_seconds'] * 1e3:.3f} ms = "
                f"{s['learned_over_adam']:.0f}x ({s['learned_over_adam_median']:.0f}x); arithmetic bound "
                f"{s['bound_seconds'] * 1e3:.2f} ms, so {100 * s['fraction_of_matmul']:.1f}% "
                f"({100 * s['fraction_of_matmul_median']:.1f}%) of matmul; compile=True "
                f"{s['compiled_step_seconds'] * 1e3:.2f} ms = {s['compiled_over_adam']:.1f}x Adam, "
                f"{100 * s['compiled_fraction_of_matmul']:.1f}% of matmul; state "
                f"{s['state_bytes_per_parameter']:.0f} bytes/parameter (Adam 8)" + peak)
