"""Shipping a trained learned optimizer as ``pretrained:<name>`` (`l2l pretrained add`), and the check figures that
the tests recompute so a change that alters what a shipped optimizer does is caught."""

from __future__ import annotations

import json
from pathlib import Path

from l2l_cli.core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.evaluation.rollout import run
from l2l_cli.meta.trainer import improvement
from l2l_cli.optimizees import build_family
from l2l_cli.optimizees.base import held_out_problems
from l2l_cli.optimizers.baselines import baseline_config, build_baseline
from l2l_cli.optimizers.learned.loading import rebuild_learned
from l2l_cli.pretrained import CHECK_FUNCTIONS, CHECK_FUNCTIONS_DEFAULT, HERE, KEPT
from l2l_cli.reporting.writers import write_json


def check_figures(payload: dict, baseline: str, baseline_lr: float, num_functions: int) -> dict:
    """Mean final loss of the checkpoint's learned optimizer and of ``baseline`` at ``baseline_lr`` on the first
    ``num_functions`` test functions of the family and horizon it was trained on (eager, this process's threads)."""
    saved = dict(payload["optimizee"])
    family = build_family(OPTIMIZEES.get(saved["name"]).config(**saved))
    steps = int(payload["schedule"]["num_steps"])
    problem = held_out_problems(family, num_functions, steps, int(payload["data_seed"]), "test")
    net = rebuild_learned(payload, "pretrained").eval()
    rule = build_baseline(baseline_config(baseline), baseline_lr)
    learned_losses, _ = run(family, problem, net, steps, expected=False)
    baseline_losses, _ = run(family, problem, rule, steps, expected=False)
    return {"num_functions": num_functions, "num_steps": steps, "data_seed": int(payload["data_seed"]),
            "learned_final_mean": float(learned_losses[-1].double().mean()), "baseline": baseline,
            "baseline_lr": baseline_lr, "baseline_final_mean": float(baseline_losses[-1].double().mean())}


def package(name: str, run_dir: Path, directory: Path = HERE) -> dict:
    """Ship the best.pt of a finished `l2l train` run (with its evaluation) as ``pretrained:<name>``."""
    run_dir = Path(run_dir)
    payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    results_path = run_dir / "eval" / "results.json"
    if not results_path.is_file():
        raise CheckpointError(f"{results_path}: no such file; package a run trained with train.evaluate=true")
    results = json.loads(results_path.read_text())
    run_record = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = [line[2:].strip() for line in overrides_file.read_text().splitlines() if line.startswith("- ")] \
        if overrides_file.is_file() else []
    best = results["best_baseline"]
    lr = results["learning_rates"][best]["lr"]
    family = payload["optimizee"]["name"]
    kept = {key: payload[key] for key in KEPT if key in payload}
    info = {
        "name": name,
        "family": family,
        "architecture": payload["optimizer"]["name"],
        "command": " ".join(["l2l train", *overrides]),
        "commit": run_record["environment"].get("git_commit"),
        "commit_dirty": run_record["environment"].get("git_dirty"),
        "environment": run_record["environment"],
        "seeds": run_record.get("seeds"),
        "trained": {"iterations": metrics.get("iterations"), "checkpoint_iteration": payload["iteration"],
                    **improvement(payload.get("history", []), float(payload["best_val"])),
                    "train_seconds": metrics.get("train_seconds"), "total_seconds": metrics.get("total_seconds")},
        "evaluation": {
            "num_test_functions": results["num_test_functions"], "num_steps": results["num_steps"],
            "best_baseline": best,
            "optimizers": {n: {"lr": results["learning_rates"].get(n, {}).get("lr"), "final_mean": s["final_mean"],
                               "final_median": s["final_median"]} for n, s in results["optimizers"].items()}},
        "check": check_figures(kept, best, lr, CHECK_FUNCTIONS.get(family, CHECK_FUNCTIONS_DEFAULT)),
        "config": run_record["config"],
    }

    save_checkpoint(kept, directory / f"{name}.pt")
    write_json(directory / f"{name}.json", info)
    return info
