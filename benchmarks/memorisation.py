"""How much 100 steps of the conv net memorise a function's images, by the size of its image subset
(optimizee.data.images_per_function): each baseline's learning rate tuned on validation functions (the staged search
of `l2l eval`), then on the same test functions its final loss on the images the function trained on (the expected
loss the evaluation reports) and on images it never drew (the validation pool, which no test function uses). A
small gap says the run learnt the task, a large one that it memorised its images.

Usage: python benchmarks/memorisation.py [--sizes 1000,10000] [--dataset fashion_mnist] [--test-functions 8]
       [--tune-functions 4] [--held-out 2000] [--threads 2]
Writes benchmarks/results/memorisation.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + sys.path[1:]

import torch  # noqa: E402

from benchmarks.harness import RESULTS  # noqa: E402
from l2l_cli.core.schemas import EvalLoopConfig  # noqa: E402
from l2l_cli.evaluation.lr_search import search_learning_rates  # noqa: E402
from l2l_cli.evaluation.rollout import final_params  # noqa: E402
from l2l_cli.optimizees.base import held_out_problems  # noqa: E402
from l2l_cli.optimizees.convnet import ConvNetConfig, ConvNetFamily  # noqa: E402
from l2l_cli.optimizees.images import ImageDataConfig  # noqa: E402
from l2l_cli.optimizers.baselines import baseline_config, build_baseline  # noqa: E402

STEPS = 100


def measure(dataset: str, size: int, args) -> dict:
    data = ImageDataConfig(name=dataset, images_per_function=size)
    if dataset == "mnist":
        data = dataclasses.replace(data, validation=1000, test=1000)
    family = ConvNetFamily(ConvNetConfig(data=data))
    val = held_out_problems(family, args.tune_functions, STEPS, 0, "validation")
    test = held_out_problems(family, args.test_functions, STEPS, 0, "test")
    held_images, held_labels = family.pools.validation  # no test function draws from it
    held = dataclasses.replace(test, images=held_images, labels=held_labels,
                               subsets=torch.arange(min(args.held_out, len(held_images))).expand(len(test), -1))
    loop = EvalLoopConfig()
    configs = {name: baseline_config(name) for name in loop.baselines}
    start = time.perf_counter()
    tuned = search_learning_rates(family, val, configs, loop.lr_grid, STEPS, loop.refine_lr)
    rows = {}
    for name, result in tuned.items():
        theta = final_params(family, test, build_baseline(configs[name], result.lr), STEPS)
        own = family.expected_loss(test, theta)
        unseen = family.expected_loss(held, theta)
        rows[name] = {"lr": result.lr, "own_images": float(own.mean()), "held_out": float(unseen.mean()),
                      "gap": float((unseen - own).mean())}
    record = {"dataset": family.data_record().get("dataset"), "images_per_function": size,
              "draws_per_image": STEPS * family.minibatch / min(size, len(family.pools.test[0])),
              "seconds": time.perf_counter() - start, "baselines": rows}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--test-functions", type=int, default=8)
    parser.add_argument("--tune-functions", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        record = measure(args.dataset, size, args)
        results.append(record)
        print(f"\n{record['dataset']}, images_per_function={size} ({record['draws_per_image']:.1f} draws per image "
              f"in {STEPS} steps), {record['seconds']:.0f} s")
        print(f"  {'baseline':10s} {'lr':>8s} {'own images':>11s} {'held out':>9s} {'gap':>8s}")
        for name, row in record["baselines"].items():
            print(f"  {name:10s} {row['lr']:8.4g} {row['own_images']:11.4f} {row['held_out']:9.4f} {row['gap']:8.4f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "memorisation.json"
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
