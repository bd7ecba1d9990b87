"""Shipping a trained learned optimizer as ``pretrained:<name>`` (`l2l pretrained add`), and the check figures that
the tests recompute so a change that alters what a shipped optimizer does is caught."""

from __future__ import annotations

from pathlib import Path

from l2l_cli.core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from l2l_cli.core.checks import ConfigError
from l2l_cli.core.environment import earlier_environments, torch_threads
from l2l_cli.core.registry import OPTIMIZEES
from l2l_cli.core.run_layout import run_dir_of
from l2l_cli.core.user_files import UserFileError, is_number, lookup, read_json, read_yaml, require
from l2l_cli.evaluation.rollout import run
from l2l_cli.meta.trainer import improvement
from l2l_cli.optimizees import build_family
from l2l_cli.optimizees.base import held_out_problems
from l2l_cli.optimizers.baselines import baseline_config, build_baseline
from l2l_cli.optimizers.learned.loading import rebuild_learned
from l2l_cli.pretrained import CHECK_FUNCTIONS, CHECK_FUNCTIONS_DEFAULT, HERE, KEPT, NAME, SHIPPED
from l2l_cli.reporting.run_records import results_problem
from l2l_cli.reporting.writers import write_json


def check_figures(payload: dict, baseline: str, baseline_lr: float, num_functions: int, task: dict | None = None
                  ) -> dict:
    """Mean final loss of the checkpoint's learned optimizer and of ``baseline`` at ``baseline_lr`` on the first
    ``num_functions`` test functions of the family and horizon it was trained on, or of ``task`` ({optimizee: its
    config, num_steps}: an evaluated variant, for an optimizer trained on a mixture) (eager, on one thread: a conv
    net's figures after 100 steps move by a few percent with the thread count, so the record and its test agree)."""
    with torch_threads(1):
        return _check_figures(payload, baseline, baseline_lr, num_functions, task)


def _check_figures(payload: dict, baseline: str, baseline_lr: float, num_functions: int, task: dict | None) -> dict:
    saved = dict(task["optimizee"] if task else payload["optimizee"])
    family = build_family(OPTIMIZEES.get(saved["name"]).config(**saved))
    steps = int(task["num_steps"] if task else payload["schedule"]["num_steps"])
    problem = held_out_problems(family, num_functions, steps, int(payload["data_seed"]), "test")
    net = rebuild_learned(payload, "pretrained").eval()
    rule = build_baseline(baseline_config(baseline), baseline_lr)
    learned_losses, _ = run(family, problem, net, steps, expected=False)
    baseline_losses, _ = run(family, problem, rule, steps, expected=False)
    return {**({"task": task} if task else {}), "num_functions": num_functions, "num_steps": steps,
            "data_seed": int(payload["data_seed"]),
            "learned_final_mean": float(learned_losses[-1].double().mean()), "baseline": baseline,
            "baseline_lr": baseline_lr, "baseline_final_mean": float(baseline_losses[-1].double().mean())}


NEEDED = ("optimizer", "optimizee", "schedule", "model", "iteration", "best_val", "data_seed")  # what package reads


def _results(path: Path) -> dict:
    """The eval's results.json, holding what ``package`` records (its best baseline's lr and every optimizer's
    figures); else one line naming it."""
    results = read_json(path, error=CheckpointError)
    optimizers, rates = results.get("optimizers"), results.get("learning_rates")
    best = results.get("best_baseline")

    def need(ok: bool, message: str) -> None:
        require(ok, path, message, error=CheckpointError)

    problem = results_problem(results)  # the figures every reader of an eval's results.json uses
    need(problem is None, problem or "")
    need(isinstance(rates, dict) and all(isinstance(v, dict) for v in rates.values()),
         "its learning_rates is not an object of objects")
    need(isinstance(best, str) and best in optimizers and isinstance(rates.get(best), dict)
         and is_number(rates[best].get("lr")),
         "its best_baseline has no numeric learning rate (a run whose baselines all diverged is not shipped)")
    need(all(lookup(results, k, int) is not None for k in ("num_test_functions", "num_steps")),
         "its num_test_functions and num_steps are not integers")
    return results


def evaluation_record(results: dict) -> dict:
    """What a shipped optimizer's record keeps of one evaluated task."""
    return {"num_test_functions": results["num_test_functions"], "num_steps": results["num_steps"],
            "best_baseline": results["best_baseline"],
            "optimizers": {n: {"lr": results["learning_rates"].get(n, {}).get("lr"), "final_mean": s["final_mean"],
                               "final_median": s["final_median"],
                               **({"final_mean_log10": s["final_mean_log10"]} if "final_mean_log10" in s else {})}
                           for n, s in results["optimizers"].items()}}


def check_name(name: str, directory: Path, replace: bool) -> None:
    """A name that stays a file of ``directory`` and takes nothing away: a plain identifier, not a shipped
    optimizer's, and an optimizer added earlier only with ``replace``."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"pretrained add: NAME {name!r}: a plain identifier is allowed (a letter, then letters, "
                          "digits or _, at most 64)")
    target = (Path(directory) / f"{name}.pt").resolve()
    if target.parent != Path(directory).resolve():  # the pattern already ensures it; a link must not either
        raise ConfigError(f"pretrained add: NAME {name!r}: {target} is outside {directory}")
    if name in SHIPPED and Path(directory).resolve() == HERE:
        raise ConfigError(f"pretrained add: NAME {name!r}: pretrained:{name} is shipped with l2l and is never "
                          "replaced; choose another name")
    existing = [p.name for p in (target, target.with_suffix(".json")) if p.exists()]
    if existing and not replace:
        raise ConfigError(f"pretrained add: NAME {name!r}: pretrained:{name} exists ({', '.join(existing)} in "
                          f"{directory}); add --replace to replace it")


def started_from(init: dict) -> dict:
    """What a record keeps of the checkpoint a run started from (train.init): as run.json has it, with the command and
    first commit of the run that wrote it where its run.json is still there (a shipped optimizer's name says it)."""
    kept = {key: init.get(key) for key in ("checkpoint", "file", "sha256")}
    file = init.get("file")
    if not isinstance(file, str):
        return kept
    try:
        source = read_json(run_dir_of(Path(file)) / "run.json")
    except UserFileError:
        return kept
    command, segments = source.get("command"), earlier_environments(source) if isinstance(
        source.get("environment"), dict) else []
    if isinstance(command, list) and all(isinstance(o, str) for o in command):
        kept["command"] = " ".join(["l2l train", *command])
    if segments:
        kept["commit"], kept["commit_dirty"] = segments[0].get("git_commit"), segments[0].get("git_dirty")
    return kept


def package(name: str, run_dir: Path, directory: Path = HERE, replace: bool = False) -> dict:
    """Ship the best.pt of a finished `l2l train` run (with its evaluation) as ``pretrained:<name>`` (a name
    ``check_name`` allows, checked before anything is read)."""
    check_name(name, directory, replace)
    run_dir = Path(run_dir)
    payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    missing = [key for key in NEEDED if key not in payload]
    if missing or lookup(payload, "optimizee.name", str) not in OPTIMIZEES.names() or lookup(
            payload, "schedule.num_steps", int) is None or lookup(payload, "optimizer.name", str) is None:
        lacks = repr(missing[0]) if missing else "an optimizer name, optimizee family or schedule.num_steps"
        raise CheckpointError(f"checkpoint {run_dir / 'checkpoints' / 'best.pt'}: lacks {lacks}, which l2l train "
                              "records; package the best.pt of an l2l train run")
    results_path = run_dir / "eval" / "results.json"
    if not results_path.is_file():
        raise CheckpointError(f"{results_path}: no such file; package a run trained with train.evaluate=true")
    study = read_json(results_path, error=CheckpointError)
    variants, task = {}, None
    if isinstance(study.get("variants"), dict) and study["variants"]:
        # a generalisation study (a mixture's run): every variant's table; the first is the headline and the check's
        require(all(NAME.fullmatch(str(v)) for v in study["variants"]), results_path,
                "its variants are not plain names (a letter, then letters, digits or _)", error=CheckpointError)
        variants = {v: _results(run_dir / "eval" / v / "results.json") for v in study["variants"]}
        first = next(iter(variants))
        results_path, results = run_dir / "eval" / first / "results.json", variants[first]
        task = {"optimizee": results.get("optimizee"), "num_steps": results["num_steps"]}
        require(isinstance(task["optimizee"], dict), results_path, "has no optimizee config", error=CheckpointError)
    else:
        results = _results(results_path)
    require(payload["optimizer"]["name"] in results["optimizers"], results_path, "has no figures of the "
            f"checkpoint's {payload['optimizer']['name']} optimizer", error=CheckpointError)
    run_record = read_json(run_dir / "run.json", error=CheckpointError)
    require(isinstance(run_record.get("environment"), dict) and isinstance(run_record.get("config"), dict),
            run_dir / "run.json", "its environment and config are not objects", error=CheckpointError)
    segments = earlier_environments(run_record)  # every segment, oldest first (non-empty: environment is checked)
    metrics = read_json(run_dir / "metrics.json", error=CheckpointError)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    listed = read_yaml(overrides_file, error=CheckpointError) if overrides_file.is_file() else []
    require(isinstance(listed, list), overrides_file, "not a list of overrides", error=CheckpointError)
    overrides = [str(item) for item in listed]
    best = results["best_baseline"]
    lr = results["learning_rates"][best]["lr"]
    family = payload["optimizee"]["name"]
    check_family = task["optimizee"]["name"] if task else family
    kept = {key: payload[key] for key in KEPT if key in payload}
    info = {
        "name": name,
        "family": family,
        "architecture": payload["optimizer"]["name"],
        "command": " ".join(["l2l train", *overrides]),
        # the commit meta-training started at; a resumed run's later segments each ran at their own
        "commit": segments[0].get("git_commit"),
        "commit_dirty": segments[0].get("git_dirty"),
        **({"resumed_at": [{"commit": e.get("git_commit"), "commit_dirty": e.get("git_dirty")}
                           for e in segments[1:]]} if len(segments) > 1 else {}),
        **({"started_from": started_from(run_record["started_from"])}
           if isinstance(run_record.get("started_from"), dict) else {}),
        "environment": run_record["environment"],
        "seeds": run_record.get("seeds"),
        "trained": {"iterations": metrics.get("iterations"), "checkpoint_iteration": payload["iteration"],
                    **improvement(payload.get("history", []), float(payload["best_val"])),
                    # a resumed run's seconds are its last command's; each resume's command line is listed
                    "train_seconds": metrics.get("train_seconds"), "total_seconds": metrics.get("total_seconds"),
                    "resumes": run_record.get("resumes", [])},
        "evaluation": evaluation_record(results),
        "data": results.get("data"),  # the evaluated data's source, pools and fingerprints (results.json's)
        **({"variants": {v: evaluation_record(r) for v, r in variants.items()}} if variants else {}),
        "check": check_figures(kept, best, lr, CHECK_FUNCTIONS.get(check_family, CHECK_FUNCTIONS_DEFAULT), task),
        "config": run_record["config"],
    }

    save_checkpoint(kept, directory / f"{name}.pt")
    write_json(directory / f"{name}.json", info)
    return info
