"""Speed and memory of meta-training and of learned-optimizer steps, measured in ONE run on this machine.

Prints, and writes to benchmarks/results/speed.json (torch version, threads and device included):
- dense fp32 matmul FLOP/s (2048 x 2048), the arithmetic limit the other figures are compared with;
- per task (default quadratic, default MNIST, default Neural Art, default conv net with LSTM-sep) and mode (eager,
  torch.compile; es and pes: train.estimator=es | pes with the default train.es): seconds per meta-iteration, the
  optimizee's loss-and-gradient share of it (the CNN for Neural Art; timed alone in the same block) and its FLOPs,
  coordinate-steps per second (functions x coordinates x optimizee steps / wall s) and model FLOP/s (3 x the
  LSTM's forward matmul FLOPs per coordinate-step for truncated BPTT; for es / pes the forward FLOPs of every
  perturbed copy) as a fraction of the matmul FLOP/s;
- the cost of one evaluation-time (no-grad) learned step relative to one Adam step on the same MNIST optimizee
  batch, next to the lower bound that arithmetic sets for that ratio, and the learned step's fraction of matmul
  FLOP/s;
- peak resident memory of a meta-training run, and the bytes per coordinate per unrolled step (from two unroll
  lengths, each in a fresh process), per estimator;
- ``LearnedOptimizer.step()`` (the trained optimizer as a torch optimizer) against ``torch.optim.Adam.step()`` on a
  784-20-10 MLP and a 784-1024-256-10 MLP (1.07M parameters), the arithmetic bound of the learned step, its state
  and peak memory per parameter.

Each figure is timed in --blocks blocks, each right after its own matmul measurement, and reported as the fastest
block against the fastest matmul of the run (each the least disturbed by other load on a shared machine), next to
the median of each block's fraction of its own matmul.

Modes: eager and compiled run in this process; default is what `l2l train optimizee=<task>` does with these threads
(compiled, and train.workers: null, which gives the quadratic task one torch.distributed rank per thread);
distributed is the same with --ranks ranks (on CUDA, --ranks 1 runs one rank on NCCL).

Usage: python benchmarks/speed.py [--tasks quadratic,mnist,neural_art,convnet,torch_optimizer]
                                  [--modes eager,compiled,default,es,pes] [--iterations N] [--blocks B]
                                  [--threads T] [--device cpu|cuda|auto]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from l2l_cli.meta.evolution import copies_per_function  # noqa: E402
from l2l_cli.meta.policy import plan_training  # noqa: E402
from l2l_cli.meta.trainer import MetaTrainer  # noqa: E402
from l2l_cli.optimizees import build_family, loss_and_grad  # noqa: E402
from l2l_cli.optimizees.base import held_out_problems  # noqa: E402
from l2l_cli.optimizees.convnet import ConvNetConfig  # noqa: E402
from l2l_cli.optimizees.mlp import MLPConfig  # noqa: E402
from l2l_cli.optimizees.neural_art import NeuralArtConfig  # noqa: E402
from l2l_cli.optimizees.quadratic import QuadraticConfig  # noqa: E402
from l2l_cli.optimizers import Baseline, baseline_config, build_learned  # noqa: E402
from l2l_cli.optimizers.compiled import maybe_compile  # noqa: E402
from l2l_cli.optimizers.lstm import LSTMConfig  # noqa: E402
from l2l_cli.optimizers.lstm_sep import LSTMSepConfig  # noqa: E402
from l2l_cli.runtime import configure_torch, resolve_device  # noqa: E402
from l2l_cli.schemas import TrainLoopConfig, TruncatedScheduleConfig  # noqa: E402

TASKS = {"quadratic": QuadraticConfig(), "mnist": MLPConfig(), "neural_art": NeuralArtConfig(),
         "convnet": ConvNetConfig()}
# the learned optimizer each task's experiment meta-trains (the paper's LSTM-sep for the conv net)
TASK_OPTIMIZERS = {"convnet": LSTMSepConfig()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def per_call(fn, repeats: int, device) -> float:
    """Seconds per call of fn(), over `repeats` calls (the device synchronised before and after)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


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


def lstm_forward_flops(cfg: LSTMConfig) -> int:
    """Matmul FLOPs of one coordinate's forward step: each layer's [x, h] @ W (4H gates) and the linear head."""
    in_size = 1 if cfg.preprocess == "none" else 2
    flops = 0
    for _ in range(cfg.layers):
        flops += 2 * (in_size + cfg.hidden_size) * 4 * cfg.hidden_size
        in_size = cfg.hidden_size
    return flops + 2 * cfg.hidden_size


def mlp_forward_backward_flops(cfg: MLPConfig, num_params_weights: int) -> int:
    """Matmul FLOPs of one optimizee's loss and gradient: forward 2 x minibatch x weights, backward twice that."""
    return 3 * 2 * cfg.minibatch * num_params_weights


ESTIMATOR_MODES = ("es", "pes")  # modes that are train.estimator values (each eager, in this process)


def setup_for(task: str, device, compiled: bool | None, loop: TrainLoopConfig, unroll: int | None = None):
    """The setup `l2l train optimizee=<task>` makes (meta.policy), with this loop and compile setting."""
    cfg = TASKS[task]
    return plan_training(family=build_family(cfg), optimizee=cfg, optimizer=TASK_OPTIMIZERS.get(task, LSTMConfig()),
                         schedule=TruncatedScheduleConfig(unroll=unroll or 20), loop=loop, seed=0, data_seed=0,
                         device=device, out_dir=ROOT / "benchmarks" / "results" / "tmp", compile=compiled)


def default_workers(task: str, device) -> int:
    """The worker processes `l2l train optimizee=<task>` uses with these threads (train.workers: null)."""
    loop = TrainLoopConfig(iterations=TASKS[task].suggested.iterations)
    return setup_for(task, device, None, loop).workers


def step_flops(trainer: MetaTrainer) -> int:
    """FLOPs of one coordinate's forward step of the trainer's learned optimizer: the LSTMs' formula, or for other
    architectures (GACs, a memory, moments) torch's FlopCounterMode over one step of a function of the family."""
    if isinstance(trainer.s.optimizer, LSTMConfig):
        return lstm_forward_flops(trainer.s.optimizer)
    from torch.utils.flop_counter import FlopCounterMode

    grad = torch.randn(1, trainer.s.family.num_params)
    state = trainer.net.init_state(grad)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        trainer.net.step(grad, state, 0)
    return round(counter.get_total_flops() / grad.numel())


def trainer_for(task: str, device, compiled: bool, unroll: int | None = None, estimator: str = "tbptt"
                ) -> MetaTrainer:
    loop = TrainLoopConfig(iterations=10**9, val_every=10**9, checkpoint_every=10**9, val_functions=1, workers=1,
                           estimator=estimator)
    return MetaTrainer(setup_for(task, device, compiled, loop, unroll))


def forward_passes(loop: TrainLoopConfig) -> int:
    """LSTM forward-pass equivalents per coordinate-step: forward + backward (3) for truncated BPTT; one forward
    per perturbed copy for es (2 x pairs + the unperturbed one) and pes (2 x pairs)."""
    if loop.estimator == "tbptt":
        return 3
    return copies_per_function(loop.es.pairs, persistent=loop.estimator == "pes")


def blocks_of(measure, blocks: int, device, reference=None) -> list:
    """`blocks` measurements, each next to its own matmul FLOP/s: on a shared machine the speed of both drifts
    (this one has run 2x slower for minutes at a time), so each ratio compares figures taken seconds apart.
    ``reference``: how to measure that matmul (default: in this process as it is)."""
    out = []
    for _ in range(blocks):
        peak = reference() if reference else matmul_flops(device, repeats=5)
        out.append((measure(), peak))
    return out


def summarise(blocks: list, flops: float) -> tuple[int, dict]:
    """(index, figures) of the fastest block, its fraction of the fastest matmul of the run (each the least disturbed
    by other load; pairing the fastest block with its own matmul would flatter it whenever that matmul was slowed),
    and the median of each block's fraction of its own matmul. blocks: (seconds for `flops` of model work, matmul
    FLOP/s)."""
    best = min(range(len(blocks)), key=lambda k: blocks[k][0])
    peak = max(pk for _, pk in blocks)
    return best, {"seconds": blocks[best][0], "fraction_of_matmul": flops / blocks[best][0] / peak,
                  "fraction_of_matmul_median": statistics.median(flops / sec / pk for sec, pk in blocks),
                  "matmul_flops_per_second": peak,
                  "blocks": [{"seconds": sec, "matmul_flops_per_second": pk} for sec, pk in blocks]}


def optimizee_work(trainer: MetaTrainer, device):
    """(fn, FLOPs): fn computes the optimizee's losses and gradients for one meta-iteration's steps on a batch of
    training functions, as the unroll does (the CNN's forward and backward for Neural Art); FLOPs counted by
    torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    s = trainer.s
    problem = s.family.sample(s.batch_size, s.schedule.num_steps, torch.Generator().manual_seed(0), device)
    theta = s.family.initial_params(problem)

    def fn() -> None:
        for t in range(s.schedule.num_steps + 1):
            loss_and_grad(s.family, problem, theta, t)

    with FlopCounterMode(display=False) as counter:
        loss_and_grad(s.family, problem, theta, 0)
    return fn, counter.get_total_flops() * (s.schedule.num_steps + 1)


def bench_meta_training(task: str, device, compiled: bool, iterations: int, blocks: int,
                        estimator: str = "tbptt") -> dict:
    trainer = trainer_for(task, device, compiled, estimator=estimator)
    start = time.perf_counter()
    trainer.train_iteration()  # includes compilation when compiled
    sync(device)
    first = time.perf_counter() - start
    trainer.train_iteration()
    optimizee_fn, optimizee_flops = optimizee_work(trainer, device)
    optimizee_seconds = []

    def one_block() -> float:
        optimizee_seconds.append(per_call(optimizee_fn, 1, device))
        return per_call(trainer.train_iteration, iterations, device)

    coord_steps = trainer.s.batch_size * trainer.s.family.num_params * trainer.s.schedule.num_steps
    model_flops = forward_passes(trainer.s.loop) * step_flops(trainer) * coord_steps
    best, figures = summarise(blocks_of(one_block, blocks, device), model_flops)
    seconds = figures.pop("seconds")
    peak = figures["matmul_flops_per_second"]
    return {"seconds_per_meta_iteration": seconds,
            # the optimizee's loss-and-gradient share of the iteration (timed alone, in the same block), and the
            # model FLOP/s with its FLOPs counted too
            "optimizee_seconds": optimizee_seconds[best], "optimizee_flops": optimizee_flops,
            "fraction_of_matmul_with_optimizee": (model_flops + optimizee_flops) / seconds / peak,
            "seconds_per_meta_iteration_median": statistics.median(b["seconds"] for b in figures["blocks"]),
            "first_iteration_seconds": first, "coordinate_steps_per_second": coord_steps / seconds,
            "model_flops_per_second": model_flops / seconds, **figures, "functions": trainer.s.batch_size,
            "coordinates": trainer.s.family.num_params, "steps": trainer.s.schedule.num_steps, "workers": 1,
            "threads_per_worker": torch.get_num_threads()}


def _distributed_trainer(task: str, rank, device) -> MetaTrainer:
    loop = TrainLoopConfig(iterations=10**9, val_every=10**9, checkpoint_every=10**9, val_functions=1, workers=1)
    return MetaTrainer(setup_for(task, device, True, loop), rank=rank)


REDUCE_REPEATS = 50


def _distributed_follower(rank, stopper, task: str, calls: int) -> None:
    """A rank > 0 of the distributed benchmark: the same collectives as rank 0, in lock-step."""
    from l2l_cli.meta.distributed import all_reduce_sum

    trainer = _distributed_trainer(task, rank, torch.device("cpu"))
    for _ in range(2):
        trainer.train_iteration()
    flat = torch.zeros(sum(p.numel() for p in trainer.net.parameters()) + 2)
    for _ in range(REDUCE_REPEATS):
        all_reduce_sum(flat)
    for _ in range(calls):
        trainer.train_iteration()


def bench_distributed(task: str, device, iterations: int, blocks: int, world: int) -> dict:
    """What `l2l train train.workers=<world>` does (train.parallel=distributed): ranks on this machine, this process
    rank 0, each with its share of the threads, meta-gradients all-reduced after every unroll."""
    from l2l_cli.meta.distributed import LocalRanks, Rank, all_reduce_sum, close_group, device_for, init_group
    from l2l_cli.meta.launch import pinned
    from l2l_cli.runtime import torch_threads

    threads, all_threads = max(1, torch.get_num_threads() // world), torch.get_num_threads()
    all_cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    calls = blocks * iterations

    def machine_matmul() -> float:  # the whole machine's, as for the other modes (rank 0 runs on a share of it)
        with torch_threads(all_threads), pinned(all_cpus):
            return matmul_flops(device, repeats=5)

    local = LocalRanks(world, threads, _distributed_follower, (task, calls), timeout_s=600)
    rank = Rank(0, world, 0)
    device = device_for(rank, device)
    with torch_threads(threads), pinned(local.own_cpus):
        init_group(rank, device, 600)
        trainer = _distributed_trainer(task, rank, device)
        start = time.perf_counter()
        trainer.train_iteration()  # compilation
        first = time.perf_counter() - start
        trainer.train_iteration()
        # the all-reduce alone, on a tensor the size of the meta-gradient: its share of an iteration
        flat = torch.zeros(sum(p.numel() for p in trainer.net.parameters()) + 2, device=device)
        reduce_s = per_call(lambda: all_reduce_sum(flat), REDUCE_REPEATS, device)
        measured = blocks_of(lambda: per_call(trainer.train_iteration, iterations, device), blocks, device,
                             machine_matmul)
        close_group()
    local.join()
    coord_steps = trainer.s.batch_size * trainer.s.family.num_params * trainer.s.schedule.num_steps
    model_flops = 3 * step_flops(trainer) * coord_steps
    _, figures = summarise(measured, model_flops)
    seconds = figures.pop("seconds")
    return {"seconds_per_meta_iteration": seconds,
            "seconds_per_meta_iteration_median": statistics.median(b["seconds"] for b in figures["blocks"]),
            "first_iteration_seconds": first, "coordinate_steps_per_second": coord_steps / seconds,
            "model_flops_per_second": model_flops / seconds, **figures, "functions": trainer.s.batch_size,
            "coordinates": trainer.s.family.num_params, "steps": trainer.s.schedule.num_steps, "workers": world,
            "threads_per_worker": threads, "all_reduce_seconds": reduce_s,
            "all_reduce_share": reduce_s * trainer.s.schedule.num_steps / trainer.s.schedule.unroll / seconds}


@torch.no_grad()
def bench_step_cost(device, compiled: bool, blocks: int, functions: int = 8, repeats: int = 10) -> dict:
    """One optimizee step (loss + gradient + update) with the learned rule vs with Adam, same MNIST batch."""
    cfg = MLPConfig()
    family = build_family(cfg)
    problem = held_out_problems(family, functions, 5 + blocks * repeats, 0, "test", device)
    torch.manual_seed(0)
    net = build_learned(LSTMConfig()).to(device).eval()
    maybe_compile(net, compiled)
    rules = {"lstm": net, "adam": Baseline(baseline_config("adam"), 0.03)}
    runs = {name: [family.initial_params(problem), None, 0] for name in rules}  # theta, state, step

    def steps(name: str, n: int) -> float:
        theta, state, first = runs[name]
        state = rules[name].init_state(theta) if state is None else state
        sync(device)
        start = time.perf_counter()
        for t in range(first, first + n):
            _, grad = loss_and_grad(family, problem, theta, t)
            update, state = rules[name].step(grad, state, t)
            theta = theta + update
        sync(device)
        runs[name] = [theta, state, first + n]
        return (time.perf_counter() - start) / n

    for name in rules:
        steps(name, 5)  # warm-up (and compilation)
    measured = blocks_of(lambda: (steps("lstm", repeats), steps("adam", repeats)), blocks, device)
    params = family.num_params * functions
    weights = sum(a * b for (a, b), _ in family.shapes)
    optimizee = mlp_forward_backward_flops(cfg, weights) * functions
    learned = optimizee + lstm_forward_flops(LSTMConfig()) * params
    adam = optimizee + 12 * params  # Adam's elementwise update, ~12 FLOPs per parameter
    best, figures = summarise([(lstm, peak) for (lstm, _), peak in measured], learned)
    del figures["seconds"]
    lstm_s, adam_s = measured[best][0]
    ratios = [lstm / adam_ for (lstm, adam_), _ in measured]
    return {"functions": functions, "coordinates": params, "lstm_step_seconds": lstm_s, "adam_step_seconds": adam_s,
            "lstm_over_adam": lstm_s / adam_s, "lstm_over_adam_median": statistics.median(ratios),
            "arithmetic_lower_bound": learned / adam, "within_factor_of_bound": lstm_s / adam_s / (learned / adam),
            "lstm_step_flops_per_second": learned / lstm_s, **figures}


TORCH_MODELS = {"mlp_784_20_10": (784, 20, 10), "mlp_784_1024_256_10": (784, 1024, 256, 10)}  # 15,910 / 1.07M


def torch_model(name: str, device) -> torch.nn.Module:
    sizes = TORCH_MODELS[name]
    layers = []
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [torch.nn.Linear(fan_in, fan_out)] + ([torch.nn.Sigmoid()] if k < len(sizes) - 2 else [])
    return torch.nn.Sequential(*layers).to(device)


def lstm_checkpoint(directory: Path) -> Path:
    """An LSTM checkpoint of the default architecture (its step costs the same whatever the weights)."""
    from dataclasses import asdict

    from l2l_cli.meta.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = build_learned(LSTMConfig())
    return save_checkpoint({"optimizer": asdict(net.config), "model": net.state_dict(), "iteration": 0,
                            "best_val": 0.0}, directory / "lstm_default.pt")


def bench_torch_optimizer(name: str, device, blocks: int, repeats: int = 5) -> dict:
    """``LearnedOptimizer.step()`` against ``torch.optim.Adam.step()`` on the same model and gradients (the step
    alone: gradients are computed once), and the arithmetic bound: the LSTM's FLOPs per step at matmul speed."""
    from l2l_cli import LearnedOptimizer

    model = torch_model(name, device)
    x = torch.rand(128, 784, device=device)
    model(x).square().mean().backward()
    params = sum(p.numel() for p in model.parameters())
    checkpoint = lstm_checkpoint(ROOT / "benchmarks" / "results")
    optimizers = {"learned": LearnedOptimizer(model.parameters(), checkpoint=checkpoint, lr=0.0),
                  "compiled": LearnedOptimizer(model.parameters(), checkpoint=checkpoint, lr=0.0, compile=True),
                  "adam": torch.optim.Adam(model.parameters(), lr=0.0)}  # lr 0: the weights stay as they are

    def steps(opt_name: str) -> float:
        return per_call(optimizers[opt_name].step, repeats, device)

    for opt_name in optimizers:
        steps(opt_name)  # warm-up: states created, compilation
    measured = blocks_of(lambda: (steps("learned"), steps("compiled"), steps("adam")), blocks, device)
    flops = lstm_forward_flops(LSTMConfig()) * params
    best, figures = summarise([(learned, peak) for (learned, _, _), peak in measured], flops)
    learned_s, compiled_s, adam_s = measured[best][0]
    compiled_best = min(c for (_, c, _), _ in measured)
    state = optimizers["learned"].state_dict()["state"]
    state_bytes = sum(leaf.numel() * leaf.element_size() for s in state.values() for leaf in s["learned_state"])
    return {"model": name, "parameters": params, "learned_step_seconds": learned_s, "adam_step_seconds": adam_s,
            "learned_over_adam": learned_s / adam_s,
            "learned_over_adam_median": statistics.median(a / c for (a, _, c), _ in measured),
            "compiled_step_seconds": compiled_best,
            "compiled_fraction_of_matmul": flops / compiled_best / figures["matmul_flops_per_second"],
            "bound_seconds": flops / figures["matmul_flops_per_second"],
            "state_bytes_per_parameter": state_bytes / params, "fraction_of_matmul": figures["fraction_of_matmul"],
            "fraction_of_matmul_median": figures["fraction_of_matmul_median"]}


def child_optimizer_memory(name: str, threads: int | None) -> float:
    """Bytes per parameter that creating a LearnedOptimizer and taking 3 steps add to a fresh process's peak RSS
    (its state, the state it replaces during a step, and the step's temporaries)."""
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]);"
            + f"from l2l_cli.runtime import configure_torch; configure_torch({threads});"
            + "from pathlib import Path; from l2l_cli import LearnedOptimizer;"
            "from benchmarks.speed import peak_rss_mib, torch_model, lstm_checkpoint;"
            "m = torch_model(sys.argv[2], 'cpu'); m(torch.rand(128, 784)).square().mean().backward();"
            "ck = lstm_checkpoint(Path(sys.argv[1]) / 'benchmarks' / 'results'); before = peak_rss_mib();\n"
            "opt = LearnedOptimizer(m.parameters(), checkpoint=ck); [opt.step() for _ in range(3)];"
            "n = sum(p.numel() for p in m.parameters()); print((peak_rss_mib() - before) * 2**20 / n)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), name], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def peak_rss_mib(pid: int | str = "self") -> float:
    """A process's peak resident set (VmHWM; ru_maxrss would survive exec and report a parent's peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def child_peak_rss(task: str, unroll: int, iterations: int, threads: int | None, estimator: str = "tbptt") -> float:
    """Peak RSS (MiB) of a fresh process that meta-trains `iterations` iterations (in that process: no workers)."""
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]);"
            + f"from l2l_cli.runtime import configure_torch; configure_torch({threads});"
            + "from benchmarks.speed import peak_rss_mib, trainer_for;"
            " t = trainer_for(sys.argv[2], torch.device('cpu'), False, int(sys.argv[3]), sys.argv[5]);\n"
            "[t.train_iteration() for _ in range(int(sys.argv[4]))]; print(peak_rss_mib())")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), task, str(unroll), str(iterations), estimator],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="quadratic,mnist,neural_art,convnet,torch_optimizer",
                        help="quadratic, mnist (meta-training, eval step), neural_art, convnet (meta-training, the "
                             "optimizee's share), torch_optimizer (LearnedOptimizer.step)")
    parser.add_argument("--modes", default="eager,compiled,default,es,pes")
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed meta-iterations per block (default 5 quadratic / 1 MNIST, Neural Art, conv net)")
    parser.add_argument("--blocks", type=int, default=4, help="timed blocks, each with its own matmul reference")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--ranks", type=int, default=None, help="ranks of the distributed mode (default: as l2l "
                        "train chooses); on CUDA, 1 runs one rank on NCCL")
    parser.add_argument("--optimizer", default=None,
                        help="the learned optimizer to meta-train on every task (default: each task's own: lstm, "
                             "lstm_sep for the conv net), e.g. lstm_gac, ntm_bfgs, rnnprop")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    args = parser.parse_args()
    if args.optimizer:
        from l2l_cli.registry import OPTIMIZERS

        for task in TASKS:
            TASK_OPTIMIZERS[task] = OPTIMIZERS.get(args.optimizer).default_config()
    configure_torch(args.threads)  # as `l2l` does: threads, and malloc keeping freed memory
    device = resolve_device(args.device)
    tasks, modes = args.tasks.split(","), args.modes.split(",")
    peak = matmul_flops(device)
    figures = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
               "optimizer": args.optimizer or "each task's own",
               "matmul_flops_per_second": peak, "blocks": args.blocks, "meta_training": {}, "learned_step": {},
               "memory": {}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; each figure is the fastest "
          f"of {args.blocks} blocks against the fastest of the matmuls measured before each block (in brackets: the "
          f"median of each block against its own matmul)")
    print(f"dense fp32 matmul: {peak / 1e9:.1f} GFLOP/s")
    for task in (t for t in tasks if t in TASKS):
        for mode in modes:
            iterations = args.iterations or (5 if task == "quadratic" else 1)
            workers = default_workers(task, device) if mode in ("default", "distributed") else 1
            if mode == "distributed" and args.ranks:
                workers = args.ranks
            if mode == "default" and workers == 1:
                if "compiled" in modes:
                    print(f"meta-training {task:9s} {mode:8s}: compiled in one process, as above")
                continue
            distributed = mode in ("default", "distributed")
            if distributed:
                m = bench_distributed(task, device, iterations, args.blocks, workers)
            elif mode in ESTIMATOR_MODES:
                m = bench_meta_training(task, device, False, iterations, args.blocks, estimator=mode)
            else:
                m = bench_meta_training(task, device, mode != "eager", iterations, args.blocks)
            figures["meta_training"][f"{task}/{mode}"] = m
            print(f"meta-training {task:9s} {mode:8s}: {m['seconds_per_meta_iteration']:6.3f} s/iteration "
                  f"({m['seconds_per_meta_iteration_median']:.3f}) ({m['functions']} x {m['coordinates']} coords x "
                  f"{m['steps']} steps), {m['coordinate_steps_per_second']:.3g} coord-steps/s, "
                  f"{m['model_flops_per_second'] / 1e9:.1f} GFLOP/s = {100 * m['fraction_of_matmul']:.1f}% "
                  f"({100 * m['fraction_of_matmul_median']:.1f}%) of matmul; first iteration "
                  f"{m['first_iteration_seconds']:.1f} s"
                  + (f"; optimizee loss+grad {m['optimizee_seconds']:.3f} s of it "
                     f"({m['optimizee_flops'] / 1e9:.1f} GFLOP), learned optimizer and the rest "
                     f"{m['seconds_per_meta_iteration'] - m['optimizee_seconds']:.3f} s; all model FLOPs "
                     f"{100 * m['fraction_of_matmul_with_optimizee']:.1f}% of matmul" if "optimizee_seconds" in m
                     else "")
                  + (f"; {workers} ranks, all-reduce {m['all_reduce_seconds'] * 1e6:.0f} us = "
                     f"{100 * m['all_reduce_share']:.1f}% of an iteration" if distributed else ""))
    if "mnist" in tasks:
        for mode in (m for m in modes if m in ("eager", "compiled")):  # evaluation runs in one process
            s = bench_step_cost(device, mode == "compiled", args.blocks)
            figures["learned_step"][mode] = s
            print(f"eval step, MNIST x{s['functions']} {mode:8s}: learned {s['lstm_step_seconds'] * 1e3:.1f} ms vs "
                  f"Adam {s['adam_step_seconds'] * 1e3:.2f} ms = {s['lstm_over_adam']:.1f}x "
                  f"({s['lstm_over_adam_median']:.1f}x) (arithmetic bound {s['arithmetic_lower_bound']:.1f}x, "
                  f"{s['within_factor_of_bound']:.2f}x of it); {100 * s['fraction_of_matmul']:.1f}% "
                  f"({100 * s['fraction_of_matmul_median']:.1f}%) of matmul")
    if "torch_optimizer" in tasks:
        figures["torch_optimizer"] = {}
        for name in TORCH_MODELS:
            s = bench_torch_optimizer(name, device, args.blocks)
            if not args.skip_memory and device.type == "cpu":
                s["peak_bytes_per_parameter"] = child_optimizer_memory(name, args.threads)
            figures["torch_optimizer"][name] = s
            print(f"LearnedOptimizer.step, {name} ({s['parameters']:,} parameters): "
                  f"{s['learned_step_seconds'] * 1e3:.2f} ms vs Adam.step {s['adam_step_seconds'] * 1e3:.3f} ms = "
                  f"{s['learned_over_adam']:.0f}x ({s['learned_over_adam_median']:.0f}x); arithmetic bound "
                  f"{s['bound_seconds'] * 1e3:.2f} ms, so {100 * s['fraction_of_matmul']:.1f}% "
                  f"({100 * s['fraction_of_matmul_median']:.1f}%) of matmul; compile=True "
                  f"{s['compiled_step_seconds'] * 1e3:.2f} ms = {100 * s['compiled_fraction_of_matmul']:.1f}%; state "
                  f"{s['state_bytes_per_parameter']:.0f} bytes/parameter (Adam 8)"
                  + (f", peak {s['peak_bytes_per_parameter']:.0f} bytes/parameter" if "peak_bytes_per_parameter" in s
                     else ""))
    if not args.skip_memory and device.type == "cpu":
        estimators = ["tbptt"] + [m for m in modes if m in ESTIMATOR_MODES]
        for task, estimator in ((t, e) for t in tasks if t in TASKS for e in estimators):
            short = child_peak_rss(task, 10, 2, args.threads, estimator)
            full = child_peak_rss(task, 20, 2, args.threads, estimator)
            cfg = TASKS[task]
            coords = cfg.batch_size * build_family(cfg).num_params
            per = (full - short) * 2**20 / (10 * coords)
            key = task if estimator == "tbptt" else f"{task}/{estimator}"
            figures["memory"][key] = {"peak_rss_mib_unroll_20": full, "peak_rss_mib_unroll_10": short,
                                      "bytes_per_coordinate_per_unrolled_step": per, "coordinates": coords}
            print(f"memory {task:9s} {estimator:5s}: peak RSS {full:.0f} MiB (unroll 20) / {short:.0f} MiB (unroll "
                  f"10) -> {per:.0f} bytes per coordinate per unrolled step")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
