"""What Neural Art's objective rewards: each variant of the objective (loss weights, feature layers, image
parameterisation) minimised by tuned Adam on the first test contents, drawn at the evaluation's horizon and after a
long run (the objective's minimiser, nearly), so one can see whether good solutions look like the content painted in
the style or like noise. Writes one grid PNG (rows: contents; per variant the images at --steps and --long) and a
JSON of the tuned rates and losses (one PNG per contents and style: _1, _2, ...).

    python benchmarks/neural_art_objective.py --out benchmarks/results/neural_art_objective
    python benchmarks/neural_art_objective.py --variant "tv1000:gamma=1000" --variant "deep:style_layers=[2,4,6]"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from l2l_cli.optimizees.neural_art import NeuralArtConfig, NeuralArtFamily

# name -> NeuralArtConfig fields: the objective before issue 30 (total-variation weight 100) and after (the
# defaults), on the base task, at 128x128 and on the new style (as experiment=neural_art_generalization)
VARIANTS = {"before": "gamma=100", "after": "", "before_128": "gamma=100;size=128", "after_128": "size=128",
            "before_new_style": "gamma=100;style=hubble_deep_field", "after_new_style": "style=hubble_deep_field"}


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, fields = text.partition(":")
    changes = {}
    for item in filter(None, fields.split(";")):
        key, _, value = item.partition("=")
        changes[key.strip()] = yaml.safe_load(value)
    return name, changes


def adam_run(family, problem, lr: float, checkpoints: list[int]) -> dict:
    """Adam from theta_0 on every function of ``problem``: {step: (losses, images, mean terms)} at each checkpoint
    step."""
    theta = family.initial_params(problem).clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    kept = {}
    for step in range(1, max(checkpoints) + 1):
        opt.zero_grad(set_to_none=True)
        family.loss(problem, theta, step).sum().backward()
        opt.step()
        if step in checkpoints:
            with torch.no_grad():
                terms = {k: float(v.mean()) for k, v in family.loss_terms(problem, theta).items()}
                kept[step] = (family.loss(problem, theta, step), family.images(theta).clone(), terms)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME:key=value;key=value (NeuralArtConfig fields); repeatable")
    parser.add_argument("--functions", type=int, default=4, help="test contents drawn (rows of the grid)")
    parser.add_argument("--steps", type=int, default=100, help="the evaluation's horizon, where lr is tuned")
    parser.add_argument("--long", type=int, default=1000, help="a long run with that lr: near the minimiser")
    parser.add_argument("--lrs", default="0.01,0.03,0.1,0.3", help="Adam learning rates tried")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/neural_art_objective"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = dict(parse_variant(v) for v in args.variant) if args.variant else {
        k: parse_variant(f"{k}:{v}")[1] for k, v in VARIANTS.items()}
    lrs = [float(x) for x in args.lrs.split(",")]
    figures, record, shown = [], {}, {}  # a new figure wherever the contents or the style change
    for name, changes in variants.items():
        start = time.perf_counter()
        family = NeuralArtFamily(NeuralArtConfig(**changes))
        problem = family.sample(args.functions, args.steps, torch.Generator().manual_seed(0), split="test")
        tuned = {lr: float(adam_run(family, problem, lr, [args.steps])[args.steps][0].mean()) for lr in lrs}
        best = min(tuned, key=tuned.get)
        runs = adam_run(family, problem, best, [args.steps, args.long])
        pair = {"content": problem.content, "style": problem.style}
        if not shown or any(shown[k].shape != v.shape or not torch.equal(shown[k], v) for k, v in pair.items()):
            shown = pair
            figures.append(dict(pair))
        for step, (_, images, _) in runs.items():
            figures[-1][f"{name}\nstep {step}"] = images
        record[name] = {"config": changes, "adam_lr_scores": tuned, "adam_lr": best,
                        "loss": {str(s): float(r[0].mean()) for s, r in runs.items()},
                        "terms": {str(s): r[2] for s, r in runs.items()}, "seconds": time.perf_counter() - start}
        print(name, json.dumps(record[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, columns in enumerate(figures, 1):
        draw(args.out.with_name(f"{args.out.name}_{i}.png"), columns)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}_1..{len(figures)}.png and {args.out}.json")


def draw(path: Path, columns: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(next(iter(columns.values())))
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows + 0.4), squeeze=False)
    for j, (title, images) in enumerate(columns.items()):
        for i in range(rows):
            ax = axes[i][j]
            ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")  # pixels as they are
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
