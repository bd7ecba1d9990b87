"""`l2l eval`: the learned optimizer and every tuned baseline on the same held-out test functions."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import torch
from omegaconf import DictConfig

from l2l_cli.cli.config import override_key, to_objects
from l2l_cli.cli.console import fmt, generalization_table, matrix_table, progress, results_table, show
from l2l_cli.cli.hydra_task import hydra_task
from l2l_cli.cli.job import job_threads, output_dir, record_run
from l2l_cli.cli.run_dir_lock import RunDirLock, claim
from l2l_cli.core.checkpoints import check_architecture
from l2l_cli.core.environment import configure_torch, environment_record, release_freed_memory, resolve_device
from l2l_cli.core.processes import Failed, ProcessDied, SideBySide, SideBySideError, process_cores, process_count
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import ConfigError, EvalConfig
from l2l_cli.core.spare_cores import SpareCores
from l2l_cli.evaluation.comparison import Evaluation, evaluate_task, final_pictures
from l2l_cli.evaluation.tuning_cache import TuningCache
from l2l_cli.meta.trainer import improvement
from l2l_cli.optimizees import build_family, family_config
from l2l_cli.optimizees.base import held_out_problems
from l2l_cli.optimizers.baselines import baseline_config
from l2l_cli.optimizers.learned.compiled import maybe_compile, should_compile
from l2l_cli.optimizers.learned.loading import check_chosen, load_learned_optimizer, require_fields
from l2l_cli.reporting.matrix import task_cell
from l2l_cli.reporting.writers import (
    plot_curves,
    stats_curves,
    write_csv,
    write_curves_csv,
    write_curves_tensorboard,
    write_generalization_tensorboard,
    write_json,
    write_pictures,
)

log = logging.getLogger("l2l.eval")


def load_learned(conf: EvalConfig, device, explicit_keys: set[str]):
    """The learned optimizer as trained, rebuilt through the registry from the architecture the checkpoint names:
    its config comes from the checkpoint; a key the user set explicitly that disagrees with it is an error rather
    than silently ignored. Returns (name, optimizer, record for results.json)."""
    if not conf.checkpoint:
        raise ConfigError(f"checkpoint: eval with optimizer={conf.optimizer.name} needs checkpoint=PATH (best.pt or "
                          "last.pt from l2l train)")
    net, payload = load_learned_optimizer(conf.checkpoint, device)
    path = conf.checkpoint
    require_fields(payload, path)
    check_chosen(path, payload, conf.optimizer.name if "name" in explicit_keys else None)
    saved = payload["optimizer"]
    not_checked = set(saved) - set(net.config.architecture())  # e.g. the LSTM's output scale
    wanted = {k: getattr(conf.optimizer, k) for k in explicit_keys
              if k in saved and k not in not_checked and hasattr(conf.optimizer, k)}
    check_architecture(path, saved, wanted)
    net.eval()
    steps = conf.eval.num_steps or conf.schedule.num_steps
    work = conf.eval.num_functions * build_family(conf.optimizee).num_params * steps
    maybe_compile(net, should_compile(conf.compile, work))
    trained_on = (payload.get("optimizee") or {}).get("name")
    if trained_on and trained_on != conf.optimizee.name:
        log.info("%s was meta-trained on optimizee=%s; evaluating it on optimizee=%s", path, trained_on,
                 conf.optimizee.name)
    verdict = improvement(payload.get("history", []), float(payload["best_val"]))
    return net.name, net, {"checkpoint": str(path), "iteration": payload["iteration"], "best_val": payload["best_val"],
                           "optimizer": saved, **verdict}


def evaluate(conf: EvalConfig, out_dir: Path, config_record: dict | None = None,
             explicit_keys: set[str] = frozenset()) -> float:
    """Evaluate on the configured task, or on every entry of eval.variants (a generalisation study).

    Returns the studied optimizer's mean final test loss (on the first variant when there are several).
    """
    configure_torch(conf.threads)
    device = resolve_device(conf.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    learned = load_learned(conf, device, explicit_keys) if conf.optimizer.name in OPTIMIZERS.learned() else None
    also = load_compared(conf, device, learned[0] if learned else conf.optimizer.name)
    variants = conf.eval.variants or member_variants(conf.optimizee)
    if not variants:
        results = evaluate_one(conf, out_dir, device, learned, config_record, also)
        return results["optimizers"][results["studied"]]["final_mean"]
    # every variant's config built (and checked) before any is evaluated: (name, what it changes, its config)
    studies = [(name, variant, apply_variant(conf, name, variant)) for name, variant in variants.items()]
    processes = process_count(conf.eval.parallel_variants, "eval.parallel_variants", len(variants), "variant",
                              torch.get_num_threads(), device, auto=True)
    if processes > 1:
        results = evaluate_side_by_side(conf, studies, out_dir, config_record, explicit_keys, processes)
    else:
        results = {study[0]: evaluate_variant(study, out_dir, device, learned, config_record, also)
                   for study in studies}
    write_generalization(out_dir, results, config_record)
    first = next(iter(results.values()))
    return first["optimizers"][first["studied"]]["final_mean"]


def evaluate_variant(study: tuple, out_dir: Path, device, learned, config_record: dict | None, also: dict,
                     quiet: bool = False) -> dict:
    """One variant: ``study`` = (name, what it changes, its config)."""
    name, variant, variant_conf = study
    log.info("variant %s: %s", name, variant or "the base task")
    result = evaluate_one(variant_conf, out_dir / name, device, learned, config_record, also, quiet, variant=name)
    release_freed_memory()
    return result


def evaluate_side_by_side(conf: EvalConfig, studies: list, out_dir: Path, config_record: dict | None,
                          explicit_keys: set[str], processes: int) -> dict:
    """The variants in ``processes`` processes side by side, each taking the next variant not yet taken when it is
    free (their costs differ), each with its own copy of the learned optimizers; the results in the variants'
    order. A process that fails stops the others, and its error is the evaluation's."""
    threads = max(1, torch.get_num_threads() // processes)
    ctx = get_context("spawn")
    taken, spare = ctx.Value("i", 0), SpareCores(ctx, process_cores(processes, threads), threads)
    current = ctx.Array("i", [-1] * processes)  # the variant each process is evaluating, to name it if it dies
    side = SideBySide(processes, threads, _evaluate_variants, lambda i: (
        conf, studies, out_dir, config_record, set(explicit_keys), taken, spare, current), "l2l-variants",
        graceful=False)
    log.info("evaluating %d variants in %d processes side by side, %d thread(s) each%s", len(studies), processes,
             threads, ", pinned to cores" if side.pinned else "")
    results = {}
    try:
        with progress() as bar:
            task = bar.add_task("variants", total=len(studies), info="")
            for message in side.messages():
                if isinstance(message, Failed):
                    side.stop()
                    raise message.error
                name, result = message
                results[name] = result
                bar.update(task, advance=1, info=f"{name} done")
    except ProcessDied as died:
        k = current[died.index]
        what = f"variant {studies[k][0]}" if 0 <= k < len(studies) else f"process {died.index}"
        raise SideBySideError(f"the process evaluating eval.variants' {what} exited unexpectedly ({died})") from None
    finally:  # after a failure the others' unfinished variants are lost anyway: they end at once
        side.join(timeout=10 if len(results) == len(studies) else 0)
    return {name: results[name] for name, _, _ in studies}


def _evaluate_variants(index: int, channel, conf: EvalConfig, studies: list, out_dir: Path,
                       config_record: dict | None, explicit_keys: set[str], taken, spare: SpareCores,
                       current) -> None:
    """One process of ``evaluate_side_by_side``: the next variant not yet taken, until none is left; then its cores
    go to the processes still evaluating one."""
    torch.manual_seed(conf.seed)
    device = resolve_device(conf.device)
    learned = load_learned(conf, device, explicit_keys) if conf.optimizer.name in OPTIMIZERS.learned() else None
    also = load_compared(conf, device, learned[0] if learned else conf.optimizer.name)
    k = -1
    spare.install(index, lambda: f"variant {studies[k][0]}")
    while not channel.stop():
        with taken.get_lock():
            k, taken.value = taken.value, taken.value + 1
        if k >= len(studies):
            spare.give_up(index)
            return
        current[index] = k
        channel.send((studies[k][0], evaluate_variant(studies[k], out_dir, device, learned, config_record, also,
                                                      quiet=True)))


def load_compared(conf: EvalConfig, device, studied: str) -> dict:
    """eval.compare's learned optimizers: name -> (optimizer, record for results.json), each as its checkpoint
    trained it."""
    compared = {}
    for name, path in conf.eval.compare.items():
        if path is None:
            log.info("eval.compare.%s is not set: no %s column", name, name)
            continue
        if name == studied:
            raise ConfigError(f"eval.compare.{name}: the studied optimizer's name; give the compared one another")
        net, payload = load_learned_optimizer(path, device)
        require_fields(payload, path)
        compared[name] = (net.eval(), {"checkpoint": str(path), "iteration": payload["iteration"],
                                       "best_val": payload["best_val"], "optimizer": payload["optimizer"],
                                       "optimizee": payload.get("optimizee")})
    return compared


def member_variants(optimizee) -> dict:
    """A mixture's members as variants (each its own family at its longest run); {} for any other family."""
    members = getattr(optimizee, "member_list", None)
    if not callable(members):
        return {}
    return {m.name: {"optimizee": m.optimizee, "num_steps": m.steps[1]} for m in members()}


VARIANT_KEYS = ("optimizee", "num_steps", "val_functions", "num_functions")


def apply_variant(conf: EvalConfig, name: str, variant: dict) -> EvalConfig:
    """The config of one generalisation variant: optimizee fields, num_steps and/or the numbers of validation
    (tuning) and test functions replaced; ``optimizee.name`` another family (its defaults, then the variant's
    fields)."""
    unknown = set(variant) - set(VARIANT_KEYS)
    if unknown:
        raise ConfigError(f"eval.variants.{name}: unknown key {sorted(unknown)[0]!r}, allowed keys: "
                          f"{', '.join(VARIANT_KEYS)}")
    counts = {}
    for key in ("num_steps", "val_functions", "num_functions"):
        value = variant.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise ConfigError(f"eval.variants.{name}.{key}: must be a whole number >= 1, got {value!r}")
        counts[key] = value if value is not None else getattr(conf.eval, key)
    loop = dataclasses.replace(conf.eval, **counts, variants={})
    if dataclasses.is_dataclass(variant.get("optimizee")):  # a whole family config (a mixture's member)
        return dataclasses.replace(conf, optimizee=variant["optimizee"], eval=loop)
    optimizee = family_config(variant.get("optimizee"), f"eval.variants.{name}.optimizee", base=conf.optimizee)
    return dataclasses.replace(conf, optimizee=optimizee, eval=loop)


def write_generalization(out_dir: Path, results: dict, config_record: dict | None) -> None:
    """One table: rows = variants, columns = optimizers, cells = mean final test loss (best per row in bold)."""
    optimizers = list(next(iter(results.values()))["optimizers"])
    rows = {variant: {name: r["optimizers"][name]["final_mean"] for name in optimizers} for variant, r in
            results.items()}
    show(generalization_table(rows, {v: r["num_steps"] for v, r in results.items()}))
    first = next(iter(results.values()))
    learned = [first["studied"], *(first.get("compared") or {})] if first["studied"] not in OPTIMIZERS.baselines() \
        else []
    matrix = {name: {v: task_cell(r, name) for v, r in results.items()} for name in learned}
    if matrix:
        best = {v: min(matrix, key=lambda n: matrix[n][v]["ratio_mean"]) for v in results}
        show(matrix_table(matrix, best, "the learned optimizers against the best tuned baseline of each variant"))
    write_csv(out_dir / "generalization.csv", ["variant", "num_steps", *optimizers],
              ([variant, str(results[variant]["num_steps"]), *(f"{row[n]:.6g}" for n in optimizers)]
               for variant, row in rows.items()))
    write_generalization_tensorboard(out_dir / "tb", rows, {v: r["num_steps"] for v, r in results.items()})
    write_json(out_dir / "results.json", {
        "generalization": rows,
        **({"matrix": matrix} if matrix else {}),
        "learning_rates": {v: {n: lr["lr"] for n, lr in r["learning_rates"].items()} for v, r in results.items()},
        "nonfinite": {v: {n: r["optimizers"][n]["nonfinite"] for n in optimizers} for v, r in results.items()},
        "variants": {v: {"optimizee": r["optimizee"], "num_steps": r["num_steps"], "data": r.get("data")}
                     for v, r in results.items()},
        "data": next(iter(results.values())).get("data"),
        **({"compared": next(iter(results.values()))["compared"]} if "compared" in next(iter(results.values()))
           else {}),
        "config": config_record,
        "environment": environment_record(),
    })


def evaluate_one(conf: EvalConfig, out_dir: Path, device, learned, config_record: dict | None = None,
                 also: dict | None = None, quiet: bool = False, variant: str = "") -> dict:
    """Compute (tune, compare) on one task, then write it; returns the results written to results.json.
    ``learned``: (name, optimizer, record) from load_learned, or None when a baseline is studied; ``also``:
    load_compared's other learned optimizers. ``quiet``: no progress bars (a process side by side); ``variant``: the
    study's variant it is, named in its log lines and table."""
    also = also or {}
    label = f"variant {variant}: " if variant else ""
    family = build_family(conf.optimizee)
    num_steps = conf.eval.num_steps or conf.schedule.num_steps
    val_problem = held_out_problems(family, conf.eval.val_functions, num_steps, conf.data_seed, "validation", device,
                                    key="eval.val_functions")
    test_problem = held_out_problems(family, conf.eval.num_functions, num_steps, conf.data_seed, "test", device,
                                     key="eval.num_functions")
    baselines = {name: baseline_config(name) for name in conf.eval.baselines}
    if learned is None:  # a baseline studied: its own config (maybe a fixed lr) first, then the others
        baselines = {conf.optimizer.name: conf.optimizer,
                     **{k: v for k, v in baselines.items() if k != conf.optimizer.name}}
    grid = conf.eval.lr_grid
    cache = None
    if conf.eval.tuning_cache:
        cache = TuningCache(conf.eval.tuning_cache, {
            "optimizee": asdict(conf.optimizee), "num_steps": num_steps, "val_functions": conf.eval.val_functions,
            "data_seed": conf.data_seed, "grid": list(grid), "refine": conf.eval.refine_lr,
            "search": conf.eval.lr_search, "device": str(device)},
            baselines)
    with progress(disable=quiet) as bar:
        to_tune = [n for n, c in baselines.items() if c.lr is None]
        tune_task = bar.add_task("tune lr", total=len(to_tune), info=f"{len(grid)} values x {len(val_problem)} "
                                                                     "validation functions")
        test_task = []  # added when testing starts, so its clock starts then

        tuning_started = time.perf_counter()

        def on_test_start() -> None:
            log.info("%stuning took %.1f s (eval.lr_search=%s)", label, time.perf_counter() - tuning_started,
                     conf.eval.lr_search)
            test_task.append(bar.add_task("test", total=len(baselines) + (learned is not None) + len(also),
                                          info=f"{len(test_problem)} test functions"))

        result = evaluate_task(
            family, val_problem, test_problem, num_steps, baselines, grid, conf.eval.refine_lr,
            learned=None if learned is None else learned[:2], also={n: net for n, (net, _) in also.items()},
            on_tuned=lambda name, r: bar.update(task_id=tune_task, advance=1, info=f"{name}: lr {fmt(r.lr)}"),
            on_test_start=on_test_start,
            on_tested=lambda name: bar.update(test_task[0], advance=1, info=f"{name} done"), tuning_cache=cache,
            search=conf.eval.lr_search)
    for tuning in result.tuning.values():
        if tuning.at_grid_edge:
            log.warning("%s: the best learning rate %s is at the edge of eval.lr_grid; widen the grid",
                        tuning.name, fmt(tuning.lr))
    shown = {n: result.rules[n] for n in (result.learned, result.best_baseline) if n is not None}
    pictures = final_pictures(family, test_problem, shown, num_steps)
    return write_evaluation(out_dir, result, conf, family.data_record(), None if learned is None else learned[2],
                            config_record, pictures, {n: record for n, (_, record) in also.items()}, variant)


def write_evaluation(out_dir: Path, result: Evaluation, conf: EvalConfig, data: dict | None,
                     learned_info: dict | None, config_record: dict | None, pictures: dict | None = None,
                     also_info: dict | None = None, variant: str = "") -> dict:
    """The table on the console (titled with ``variant``, a study's variant, where there is one); TensorBoard,
    curves.csv, curves.png and results.json in out_dir; pictures.png (and TensorBoard's images tab) where the family
    draws its parameters as images."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats, tuning, name = result.stats, result.tuning, conf.optimizee.name
    lr_text = {n: fmt(r.lr) + ("" if r.tuned else " fixed") for n, r in tuning.items()}
    for learned in (result.learned, *result.also):
        if learned:
            lr_text[learned] = "learned"
    task = f"{name} (variant {variant})" if variant else name
    title = f"{task}: final loss (step {result.num_steps}) on {result.num_test_functions} test functions"
    show(results_table(stats, lr_text, result.learned, result.best_baseline, title))
    if learned_info is not None and learned_info.get("improved") is False:
        log.warning("%s is no better than untrained (validation %.4g vs %.4g at iteration 0): not worth using",
                    result.learned, learned_info["best_val"], learned_info["untrained_val"])
    write_curves_tensorboard(out_dir / "tb", stats)
    write_curves_csv(out_dir / "curves.csv", stats)
    plot_curves(out_dir / "curves.png",
                stats_curves(stats, {n: f"{n} (lr {fmt(r.lr)})" for n, r in tuning.items()}, result.learned),
                title=f"{task}: {result.num_test_functions} test functions", ylabel="loss (mean, 10-90% band)")
    if pictures is not None:
        write_pictures(out_dir / "pictures.png", out_dir / "tb", pictures, step=result.num_steps,
                       title=f"{name}: step {result.num_steps}, first {len(next(iter(pictures.values())))} test "
                             "functions")
    results = {
        "optimizee": asdict(conf.optimizee),
        "data": data,
        "num_steps": result.num_steps,
        "num_test_functions": result.num_test_functions,
        "num_validation_functions": result.num_validation_functions,
        "seeds": {"seed": conf.seed, "data_seed": conf.data_seed, "validation_stream": "validation",
                  "test_stream": "test"},
        "studied": result.studied,
        "learned": learned_info,
        **({"compared": also_info} if also_info else {}),
        "best_baseline": result.best_baseline,
        "learning_rates": {n: {"lr": r.lr, "tuned": r.tuned, "validation_scores": _by_rate(r.scores),
                               **({"search": r.search, "screening_scores": _by_rate(r.screen),
                                   "stopped": _by_rate(r.stopped)} if r.tuned else {})}
                           for n, r in tuning.items()},
        "optimizers": {n: {"final_mean": s.final_mean, "final_median": s.final_median,
                           "final_mean_log10": s.final_mean_log10,
                           "final_expected_mean": s.final_expected_mean, "nonfinite": s.nonfinite,
                           "runs": s.runs, "mean": s.mean, "median": s.median, "q10": s.q10, "q90": s.q90,
                           "mean_log10": s.mean_log10}
                       for n, s in stats.items()},
        "config": config_record if config_record is not None else {
            "optimizee": asdict(conf.optimizee), "optimizer": asdict(conf.optimizer),
            "schedule": asdict(conf.schedule), "eval": asdict(conf.eval)},
        "environment": environment_record(),
    }
    write_json(out_dir / "results.json", results)
    log.info("wrote %s (results.json, curves.csv, curves.png%s, tb/)", out_dir,
             ", pictures.png" if pictures is not None else "")
    return results


def _by_rate(values: dict) -> dict:
    """learning rate -> value as JSON keeps it (keys are strings)."""
    return {str(lr): value for lr, value in values.items()}


def _explicit_optimizer_keys() -> set[str]:
    from hydra.core.hydra_config import HydraConfig

    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override_key(override)
        if key.startswith("optimizer."):
            keys.add(key.split(".", 1)[1])
        elif key == "optimizer":  # optimizer=<name>: the checkpoint must hold that one (check_chosen)
            keys.add("name")
    return keys


def run(cfg: DictConfig) -> float:
    conf: EvalConfig = to_objects(cfg)
    conf.threads = job_threads(conf.threads)
    configure_torch(conf.threads)
    out_dir = output_dir()
    with RunDirLock(out_dir, "eval"):
        claim(out_dir, "eval", continuing=False)  # also when a config file, not the command line, named the dir
        record = record_run(cfg, out_dir)
        torch.manual_seed(conf.seed)
        return evaluate(conf, out_dir, config_record=record["config"], explicit_keys=_explicit_optimizer_keys())


main = hydra_task(run)
