"""The Hydra side of the config: every schema in Hydra's ConfigStore, and a composed DictConfig turned into the
dataclasses of ``l2l_cli.core.schemas`` (the only form numerical code sees).

Schemas are stored under ``schema/<group>/<name>`` so they never show up as user choices; each YAML option extends
its schema, which gives type checks and unknown-key errors at compose time. Range and cross-field rules live in
the dataclasses' ``__post_init__`` and run in :func:`to_objects`. Family and optimizer schemas come from the
registries, so a new one needs no line here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Dict

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from l2l_cli.cli.run_dir_lock import unique_suffix
from l2l_cli.core.registry import ESTIMATORS, OPTIMIZEES, OPTIMIZERS, SCHEDULES
from l2l_cli.core.schemas import (
    ConfigError,
    EvalConfig,
    EvalLoopConfig,
    TrainConfig,
    TrainLoopConfig,
    check_choice,
)
from l2l_cli.core.user_files import UserFileError, exception_line, fail, read_json, require


def config_dir() -> str:
    """The checkout's conf/ when running from source, else the copy shipped as package data (absolute path)."""
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / "train.yaml").is_file():
        return str(checkout)
    return str(Path(str(resources.files("l2l_cli") / "conf")).resolve())


REGISTRIES = {"optimizee": OPTIMIZEES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "estimator": ESTIMATORS}


def group_schemas() -> Dict[str, Dict[str, type]]:
    """Config group -> option name -> its dataclass."""
    return {group: {e.name: e.config for e in registry.entries()} for group, registry in REGISTRIES.items()}


def register_schemas() -> None:
    cs = ConfigStore.instance()
    for group, registry in REGISTRIES.items():
        for entry in registry.entries():
            # built without running the checks: a schema may leave a value to the user (custom's target)
            node = OmegaConf.merge(OmegaConf.structured(entry.config), {"name": entry.name, **entry.defaults})
            cs.store(group=f"schema/{group}", name=entry.name, node=node)
    cs.store(group="schema", name="train", node=TrainConfig)
    cs.store(group="schema", name="eval", node=EvalConfig)
    OmegaConf.register_new_resolver("l2l_groups", config_groups_help, replace=True)
    # after the run dir's timestamp: runs started in the same second get directories of their own (one value per
    # process: cached)
    OmegaConf.register_new_resolver("l2l_unique", unique_suffix, replace=True, use_cache=True)


def config_groups_help() -> str:
    """The group list of `l2l <command> --help` (Hydra's own would list the schema/* groups too)."""

    lines = [f"{group}: {', '.join(registry.names())}" + (" (train only)" if group == "estimator" else "")
             for group, registry in REGISTRIES.items()]
    lines.append(f"baselines (eval.baselines): {', '.join(sorted(OPTIMIZERS.baselines()))}")
    for group, note in (("experiment", ""), ("debug", " (train only)"),
                        ("hparams_search", " (train only)")):
        names = sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
        lines.append(f"{group}: {', '.join(names)}{note}")
    return "\n".join(lines)


def _group_object(group: str, node: DictConfig, schemas: dict):
    name = node.get("name")
    check_choice(str(name), f"{group}.name", tuple(schemas))
    return schemas[name](**OmegaConf.to_container(node, resolve=True))


def to_objects(cfg: DictConfig):
    """Turn a composed config into its dataclass (running every range and cross-field check)."""
    root_cls = EvalConfig if "checkpoint" in cfg else TrainConfig  # eval's key (train keys may come with an experiment)
    plain = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
             for key in cfg if key != "hydra"}
    plain.update({g: _group_object(g, cfg[g], schemas) for g, schemas in group_schemas().items() if g in cfg})
    for key, cls in (("train", TrainLoopConfig), ("eval", EvalLoopConfig)):
        if isinstance(plain.get(key), dict):  # (eval's train: None unless an experiment sets a recipe)
            plain[key] = cls(**plain[key])
    return root_cls(**plain)


RUNTIME_KEYS = ("device", "threads", "compile")  # how a run runs, not what it computes: a resume may change them


def override_key(override: str) -> str:
    """`train.iterations` of `train.iterations=9` (also `+key=` and `~key`)."""
    return override.split("=", 1)[0].lstrip("+~")


def command_line_keys(cfg_overrides) -> list[str]:
    """The key of each `key=value` the user gave (not `group=option` choices, not hydra.* keys, not the seeds)."""
    keys = [override_key(override) for override in cfg_overrides]
    return [key for key in keys if "." in key and not key.startswith("hydra.") or key in RUNTIME_KEYS]


def resumed_command(recorded: list[str], overrides: list[str]) -> list[str]:
    """The overrides that rebuild a resumed run's config: the recorded command's, with the keys this command line
    changed (those ``continue_recorded`` applies: `train.iterations=...`, not `resume=` or group choices) put in
    place or added."""
    keys = set(command_line_keys(overrides))
    applied = {override_key(o): o for o in overrides if override_key(o) in keys}
    kept = [applied.get(override_key(o), o) for o in recorded]
    recorded_keys = {override_key(o) for o in recorded}
    return kept + [o for k, o in applied.items() if k not in recorded_keys]


def upgrade_recorded(config: dict) -> dict:
    """A run.json config from before estimators were a config group (train.estimator, train.es, train.bptt,
    train.second_order) in today's form, so runs recorded then resume."""
    train = config.get("train", {})
    if "estimator" in config or "train" not in config:
        return config
    name = train.pop("estimator", "tbptt")
    es, bptt, second_order = train.pop("es", {}), train.pop("bptt", "manual"), train.pop("second_order", False)
    config["estimator"] = ({"name": name, "bptt": bptt, "second_order": second_order} if name == "tbptt" else
                           {"name": name, **{k: v for k, v in es.items() if k in ("sigma", "pairs")}})
    return config


def _recorded_config(path: Path) -> dict:
    """run.json's config, its sections (those ``continue_recorded`` and ``upgrade_recorded`` read) objects; else one
    ``UserFileError`` line naming the file."""
    config = read_json(path).get("config")
    require(isinstance(config, dict), path, "its 'config' is not an object")
    for key in ("optimizee", "optimizer", "train", "estimator"):
        require(isinstance(config.get(key, {}), dict), path, f"its config.{key} is not an object")
    for group in ("optimizee", "optimizer"):
        name = config.get(group, {}).get("name", "")
        require(isinstance(name, str) and name.isprintable(), path, f"its config.{group}.name is not a name")
    require(isinstance(config.get("train", {}).get("es", {}), dict), path, "its config.train.es is not an object")
    return config


def _recorded_architecture(recorded: dict, path: Path) -> dict:
    """The architecture of the recorded learned optimizer (nothing for a baseline); one line when the recorded
    optimizer config is not one this l2l builds."""
    name = recorded.get("optimizer", {}).get("name")
    if name not in OPTIMIZERS.names() or not OPTIMIZERS.get(name).learned:
        return {}
    try:
        return OPTIMIZERS.get(name).config(**recorded["optimizer"]).architecture()
    except Exception as exc:  # noqa: BLE001 - any recorded value may make the config's checks raise
        fail(path, f"its config.optimizer is not one this l2l reads ({exception_line(exc)})")


def continue_recorded(cfg: DictConfig, run_dir: Path, overrides) -> DictConfig:
    """The config a resumed run continues with: the one recorded in ``run_dir``/run.json, with the values given on
    this command line on top (listed in one warning line). Another optimizee family or learned-optimizer
    architecture than the recorded one, or another seed, fails with one line; a group the command line does not name
    continues the recorded one."""
    import logging

    log = logging.getLogger("l2l.train")
    try:
        recorded = upgrade_recorded(_recorded_config(run_dir / "run.json"))
        architecture = _recorded_architecture(recorded, run_dir / "run.json")
    except UserFileError as exc:
        log.warning("resume: %s has no readable run.json (%s); continuing with this command's config", run_dir, exc)
        return cfg
    chosen = {override_key(override) for override in overrides}
    for group, registry in (("optimizee", OPTIMIZEES), ("optimizer", OPTIMIZERS)):
        was, now = recorded.get(group, {}).get("name"), cfg[group].name
        # a group left unnamed on the command line continues the recorded one, if that is one l2l knows
        unnamed = not {group, "experiment"} & chosen and isinstance(was, str) and was in registry.names()
        if was != now and not unnamed:
            raise ConfigError(f"resume: the run in {run_dir} meta-trained {group}={was}; a resumed run cannot switch "
                              f"to {group}={now} (start a new run instead)")
    for key in ("seed", "data_seed"):
        if key in chosen and cfg[key] != recorded.get(key):
            raise ConfigError(f"resume: the run in {run_dir} has {key}={recorded.get(key)}; a resumed run continues "
                              f"its random streams (got {key}={cfg[key]}; start a new run for another seed)")
    merged = OmegaConf.create(recorded)
    changed = []
    for key in command_line_keys(overrides):
        if key == "resume":
            continue
        now = OmegaConf.select(cfg, key)
        now = OmegaConf.to_container(now, resolve=True) if OmegaConf.is_config(now) else now
        was = OmegaConf.select(merged, key)
        was = OmegaConf.to_container(was, resolve=True) if OmegaConf.is_config(was) else was
        if key.startswith("optimizer.") and key.split(".", 1)[1] in architecture and now != was:
            raise ConfigError(f"resume: the run in {run_dir} has {key}={was}; a resumed run keeps its architecture "
                              f"(got {now})")
        if now != was:
            changed.append(f"{key}={now} (was {was})")
            OmegaConf.update(merged, key, now, force_add=True)
    merged.resume = OmegaConf.to_container(cfg, resolve=True).get("resume")
    if changed:
        log.warning("resume: continuing %s with its recorded config; from this command line: %s", run_dir,
                    ", ".join(changed))
    return merged
