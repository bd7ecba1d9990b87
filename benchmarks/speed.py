"""Speed and memory of meta-training and of learned-optimizer steps, measured in ONE run on this machine.

Prints, and writes to benchmarks/results/speed.json (torch version, threads and device included):
- dense fp32 matmul FLOP/s (2048 x 2048), the arithmetic limit the other figures are compared with;
- per task (default quadratic, default MNIST, default Neural Art, default conv net with LSTM-sep) and mode (eager,
  torch.compile; es and pes: estimator=es | pes with the estimator's defaults, estimator.sigma and
  estimator.pairs): seconds per meta-iteration, the optimizee's loss-and-gradient share of it (the CNN for Neural
  Art; timed alone in the same block) and its FLOPs, coordinate-steps per second (functions x coordinates x
  optimizee steps / wall s) and model FLOP/s (3 x the LSTM's forward matmul FLOPs per coordinate-step for truncated
  BPTT; for es / pes the forward FLOPs of every perturbed copy) as a fraction of the matmul FLOP/s;
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

Modes: eager and compiled run in this process, as does each registered estimator other than truncated BPTT (es,
pes; eager); default is what `l2l train optimizee=<task>` does with these threads (compiled, and train.workers:
null, which gives the quadratic task one torch.distributed rank per thread); distributed is the same with --ranks
ranks (on CUDA, --ranks 1 runs one rank on NCCL).

This is the command line; the benchmarks are registered in benchmarks/registry.py (one module each:
meta_training with distributed, eval_step, torch_optimizer, memory) and share benchmarks/harness.py, flops.py and
tasks.py.

Usage: python benchmarks/speed.py [--tasks quadratic,mnist,neural_art,convnet,torch_optimizer]
                                  [--modes eager,compiled,default,es,pes] [--iterations N] [--blocks B]
                                  [--threads T] [--device cpu|cuda|auto] [--skip-memory] [--ranks R]
                                  [--optimizer NAME] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the repository root on the path instead of benchmarks/, whose modules (distributed, memory, ...) would otherwise
# shadow installed packages of the same names
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import torch  # noqa: E402

from benchmarks import meta_training, torch_optimizer  # noqa: E402
from benchmarks.harness import RESULTS, matmul_flops  # noqa: E402
from benchmarks.registry import Benchmark, load  # noqa: E402
from benchmarks.tasks import TASKS  # noqa: E402
from l2l_cli.core.environment import configure_torch, resolve_device  # noqa: E402
from l2l_cli.core.registry import OPTIMIZERS  # noqa: E402


def names(text: str) -> list:
    return text.split(",")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=names, default="quadratic,mnist,neural_art,convnet,torch_optimizer",
                        help="quadratic, mnist (meta-training, eval step), neural_art, convnet (meta-training, the "
                             "optimizee's share), torch_optimizer (LearnedOptimizer.step)")
    parser.add_argument("--modes", type=names, default="eager,compiled,default,es,pes,es-shared,pes-shared",
                        help=f"of {', '.join(meta_training.modes())}")
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
    parser.add_argument("--out", default=str(RESULTS / "speed.json"))
    args = parser.parse_args(argv)
    for flag, given, known in (("--tasks", args.tasks, [*TASKS, torch_optimizer.TASK]),
                               ("--modes", args.modes, meta_training.modes()),
                               ("--optimizer", [args.optimizer] if args.optimizer else [], OPTIMIZERS.learned())):
        unknown = [name for name in given if name not in known]
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return args


def header(args: argparse.Namespace, device: torch.device, peak: float) -> dict:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; each figure is the fastest "
          f"of {args.blocks} blocks against the fastest of the matmuls measured before each block (in brackets: the "
          f"median of each block against its own matmul)")
    print(f"dense fp32 matmul: {peak / 1e9:.1f} GFLOP/s")
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
            "optimizer": args.optimizer or "each task's own", "matmul_flops_per_second": peak, "blocks": args.blocks}


def run(benchmark: Benchmark, args: argparse.Namespace, device: torch.device, section: dict) -> None:
    """Runs a benchmark, printing each entry's line and adding its figures to ``section`` as it is measured."""
    for result in benchmark.run(args, device):
        if isinstance(result, str):
            print(result, flush=True)
            continue
        name, figures = result
        section[name] = figures
        print(benchmark.line(name, figures), flush=True)


def main() -> None:
    args = parse_args()
    configure_torch(args.threads)  # as `l2l` does: threads, and malloc keeping freed memory
    device = resolve_device(args.device)
    benchmarks = load()
    figures = header(args, device, matmul_flops(device))
    figures.update({name: {} for name, benchmark in benchmarks.items() if benchmark.always_written})
    for name, benchmark in benchmarks.items():
        if benchmark.selected(args, device):
            run(benchmark, args, device, figures.setdefault(name, {}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
