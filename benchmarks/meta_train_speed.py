"""Meta-training and learned-step speed on this machine, measured in one run.

Prints, and writes to benchmarks/results/speed.json:
- meta-training throughput for the default quadratic run (functions x coordinates x optimizee steps / wall s),
  seconds per meta-iteration, and model FLOP/s (3 x the LSTM's forward matmul FLOPs per coordinate-step)
  as a fraction of a large dense fp32 matmul's FLOP/s measured in the same run;
- the cost of one evaluation-time (no-grad) learned step relative to one Adam step on the same batch;
- peak resident memory.

Usage: python benchmarks/meta_train_speed.py [--iterations N] [--threads T] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from l2l_cli.config import BASELINE_DEFAULTS, LSTMConfig, TrainLoopConfig, TruncatedScheduleConfig  # noqa: E402
from l2l_cli.meta.trainer import MetaTrainer, TrainSetup  # noqa: E402
from l2l_cli.optimizees import QuadraticFamily, loss_and_grad  # noqa: E402
from l2l_cli.optimizers import Baseline, LearnedRule  # noqa: E402
from l2l_cli.seeding import generator  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def lstm_forward_flops_per_coordinate(cfg: LSTMConfig) -> int:
    """Matmul FLOPs of one coordinate's forward step: each layer's [x, h] @ W (4H gates) and the linear head."""
    in_size = 1 if cfg.preprocess == "none" else 2
    flops = 0
    for _ in range(cfg.layers):
        flops += 2 * (in_size + cfg.hidden_size) * 4 * cfg.hidden_size
        in_size = cfg.hidden_size
    return flops + 2 * cfg.hidden_size


def bench_meta_training(device, iterations: int, tmp: Path) -> dict:
    optimizer, schedule, batch, dim = LSTMConfig(), TruncatedScheduleConfig(), 128, 10
    setup = TrainSetup(family=QuadraticFamily(dim), optimizer=optimizer, schedule=schedule,
                       loop=TrainLoopConfig(iterations=10**9, val_every=10**9, checkpoint_every=10**9),
                       batch_size=batch, seed=0, data_seed=0, device=device, out_dir=tmp)
    trainer = MetaTrainer(setup)
    for _ in range(3):  # warm-up
        trainer.train_iteration()
    sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        trainer.train_iteration()
    sync(device)
    seconds = (time.perf_counter() - start) / iterations
    coord_steps = batch * dim * schedule.num_steps
    model_flops = 3 * lstm_forward_flops_per_coordinate(optimizer) * coord_steps / seconds
    return {"seconds_per_meta_iteration": seconds, "coordinate_steps_per_second": coord_steps / seconds,
            "model_flops_per_second": model_flops, "functions": batch, "coordinates": dim,
            "steps": schedule.num_steps}


@torch.no_grad()
def bench_step_cost(device, repeats: int = 200) -> dict:
    family, batch = QuadraticFamily(10), 128
    problem = family.sample(batch, 1, generator(0, "test"), device)
    theta = family.initial_params(problem)
    _, grad = loss_and_grad(family, problem, theta, 0)
    torch.manual_seed(0)
    from l2l_cli.meta.trainer import build_net

    cfg = LSTMConfig()
    timings = {}
    for name, rule in (("lstm", LearnedRule(build_net(cfg).to(device))),
                       ("adam", Baseline(BASELINE_DEFAULTS["adam"], 0.1))):
        state = rule.init_state(theta)
        for t in range(5):
            _, state = rule.step(grad, state, t)
        sync(device)
        start = time.perf_counter()
        for t in range(repeats):
            _, state = rule.step(grad, state, t)
        sync(device)
        timings[name] = (time.perf_counter() - start) / repeats
    flops = lstm_forward_flops_per_coordinate(cfg) * theta.numel()
    return {"lstm_step_seconds": timings["lstm"], "adam_step_seconds": timings["adam"],
            "lstm_over_adam": timings["lstm"] / timings["adam"], "lstm_step_flops_per_second": flops / timings["lstm"],
            "coordinates": theta.numel()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = Path(args.out).parent / "tmp"
    peak_flops = matmul_flops(device)
    meta = bench_meta_training(device, args.iterations, tmp)
    step = bench_step_cost(device)
    figures = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
        "machine": platform.processor() or platform.machine(),
        "matmul_flops_per_second": peak_flops,
        "meta_training": {**meta, "fraction_of_matmul": meta["model_flops_per_second"] / peak_flops},
        "learned_step": {**step, "fraction_of_matmul": step["lstm_step_flops_per_second"] / peak_flops},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    m = figures["meta_training"]
    print(f"torch {figures['torch']}, {figures['threads']} threads, device {figures['device']}")
    print(f"dense fp32 matmul:            {peak_flops / 1e9:8.1f} GFLOP/s")
    print(f"meta-training (quadratic):    {m['seconds_per_meta_iteration']:8.3f} s / meta-iteration "
          f"({m['functions']} functions x {m['coordinates']} coords x {m['steps']} steps)")
    print(f"  coordinate-steps / s:       {m['coordinate_steps_per_second']:8.3g}")
    print(f"  model FLOP/s:               {m['model_flops_per_second'] / 1e9:8.2f} GFLOP/s = "
          f"{100 * m['fraction_of_matmul']:.1f}% of matmul")
    s = figures["learned_step"]
    print(f"learned step / Adam step:     {s['lstm_over_adam']:8.1f}x  ({s['lstm_step_seconds'] * 1e6:.0f} us vs "
          f"{s['adam_step_seconds'] * 1e6:.0f} us, {100 * s['fraction_of_matmul']:.2f}% of matmul)")
    print(f"peak RSS:                     {figures['peak_rss_mib']:8.0f} MiB")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
