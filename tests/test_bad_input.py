"""Table-driven: malformed command lines exit non-zero with one line naming the key and what is allowed,
before any work is done and without a traceback. Run in-process through the real `l2l` dispatcher."""

import pytest
from hydra.core.global_hydra import GlobalHydra

from l2l_cli.cli.main import main
from l2l_cli.core.registry import OPTIMIZEES, OPTIMIZERS

MALFORMED = [
    (["train", "optimizee.dim=abc"], "optimizee.dim: Value 'abc' of type 'str' could not be converted to Integer"),
    (["train", "optimizee.dim=0"], "optimizee.dim: must be >= 1, got 0"),
    (["train", "optimizee.batch_size=0"], "optimizee.batch_size: must be >= 1, got 0"),
    (["train", "optimizee.distribution=cauchy"],
     "optimizee.distribution: got 'cauchy', allowed values: gaussian, uniform"),
    (["train", "optimizee=nope"], f"optimizee=nope: no such option, allowed values: {', '.join(OPTIMIZEES.names())}"),
    (["train", "optimizer=lbfgs"], f"optimizer=lbfgs: no such option, allowed values: {', '.join(OPTIMIZERS.names())}"),
    (["train", "schedule=cosine"],
     "schedule=cosine: no such option, allowed values: curriculum, loguniform, truncated"),
    (["train", "optimizee.nope=1"],
     "optimizee.nope: unknown key, allowed keys under optimizee: activation, alpha, args, batch_norm, batch_size"),
    (["train", "optimizee=mnist", "optimizee.dim=4"],
     "optimizee.dim: unknown key, allowed keys under optimizee=mnist: activation, batch_size, data, hidden"),
    (["train", "trian.iterations=5"],
     "trian: unknown key, allowed keys: compile, data_seed, device, estimator, eval, optimizee"),
    (["train", "train.iteration=5"],
     "train.iteration: unknown key, allowed keys under train: iterations, population, parallel_members, meta_lr"),
    (["train", "schedule.unroll=200"], "schedule.unroll: must be <= schedule.num_steps (100), got 200"),
    (["train", "schedule.unroll=0"], "schedule.unroll: must be >= 1, got 0"),
    (["train", "schedule.num_steps=-5"], "schedule.num_steps: must be >= 1, got -5"),
    (["train", "schedule.weighting=final"], "schedule.weighting: got 'final', allowed values: uniform, log, last"),
    (["train", "optimizer.hidden_size=0"], "optimizer.hidden_size: must be >= 1, got 0"),
    (["train", "optimizer.layers=-1"], "optimizer.layers: must be >= 1, got -1"),
    (["train", "optimizer.preprocess=log"], "optimizer.preprocess: got 'log', allowed values: none, paper, deepmind"),
    (["train", "optimizer.output_scale=0"], "optimizer.output_scale: must be a positive number, got 0.0"),
    (["train", "train.iterations=0"], "train.iterations: must be >= 1, got 0"),
    (["train", "train.population=0"], "train.population: must be >= 1, got 0"),
    (["train", "train.iterations=abc"], "train.iterations: Value 'abc' of type 'str' could not be converted"),
    (["train", "train.meta_lr=-1"], "train.meta_lr: must be a positive number, got -1.0"),
    (["train", "train.clip_grad=0"], "train.clip_grad: must be > 0 or null (no clipping), got 0.0"),
    (["train", "train.val_every=0"], "train.val_every: must be >= 1, got 0"),
    (["train", "train.meta_lr_schedule=step"], "train.meta_lr_schedule: got 'step', allowed values: constant, cosine"),
    (["train", "estimator.bptt=magic"], "estimator.bptt: got 'magic', allowed values: manual, autograd"),
    (["train", "estimator=reinforce"], "estimator=reinforce: no such option, allowed values: es, pes, tbptt"),
    (["train", "estimator=es", "estimator.sigma=0"], "estimator.sigma: must be a positive number, got 0.0"),
    (["train", "estimator=pes", "estimator.pairs=0"], "estimator.pairs: must be >= 1, got 0"),
    (["train", "estimator=pes", "estimator.second_order=true"],
     "estimator.second_order: unknown key, allowed keys under estimator=pes: name, pairs, shared, sigma"),
    # keys that moved to the estimator group name their new place
    (["train", "train.estimator=pes"], "train.estimator: no longer a key; use estimator=<name> (a config group: "
     "tbptt, es, pes)"),
    (["train", "train.es.sigma=0.1"], "train.es.sigma: no longer a key; use estimator.sigma, with estimator=es or "
     "estimator=pes"),
    (["train", "train.bptt=autograd"], "train.bptt: no longer a key; use estimator.bptt (estimator=tbptt, the "
     "default)"),
    (["train", "train.second_order=true"], "train.second_order: no longer a key; use estimator.second_order "
     "(estimator=tbptt, the default)"),
    (["train", "train.workers=0"], "train.workers: must be >= 1 or null (auto), got 0"),
    (["train", "train.parallel_members=0"], "train.parallel_members: must be >= 1 or null (auto), got 0"),
    (["train", "train.parallel_members=3", "train.population=2", "train.workers=1"],
     "train.parallel_members: at most one process per member of train.population=2, got 3"),
    (["eval", "eval.parallel_variants=0"], "eval.parallel_variants: must be >= 1 or null (auto), got 0"),
    (["eval", "eval.variants={a:{num_steps:40}}"],
     "eval.variants.a: unknown key; a new entry needs a leading +: +eval.variants={a:{num_steps:40}}"),
    (["train", "train.workers=500"],
     "train.workers: each rank takes a share of optimizee.batch_size=128 functions, so at most 128, got 500"),
    (["train", "train.ema_decay=1"], "train.ema_decay: must be in [0, 1), got 1.0"),
    (["train", "train.patience=-1"], "train.patience: must be a whole number >= 0 (0: off), got -1"),
    (["train", "eval.refine_lr=-1"], "eval.refine_lr: must be >= 0 (rounds of refinement), got -1"),
    (["train", "optimizee=mnist", "optimizee.data.images_per_function=0"],
     "optimizee.data.images_per_function: must be >= 1 or null, got 0"),
    (["train", "optimizee=neural_art", "optimizee.size=100"],
     "optimizee.size: must be a multiple of 8 (the stride of block 4), got 100"),
    (["train", "optimizee=neural_art", "optimizee.style=/no/such.png"],
     "optimizee.style: '/no/such.png' is neither a file nor a built-in image (astronaut, camera"),
    (["train", "optimizee=neural_art", "optimizee.init=zeros"],
     "optimizee.init: got 'zeros', allowed values: content, noise"),
    (["train", "optimizee=convnet", "optimizee.data.name=cifar10"],
     "optimizee.data.root: optimizee.data.name=cifar10 needs the cifar-10-batches-py directory"),
    (["train", "optimizee=convnet", "optimizee.data.name=cifar10", "optimizee.data.root=/nonexistent/cifar"],
     "optimizee.data.root: /nonexistent/cifar is not a directory; expected cifar-10-batches-py with data_batch_1"),
    (["train", "optimizee=convnet", "optimizee.data.labels=[1,12]"],
     "optimizee.data.labels: [1, 12] names a class the data lacks (classes 0..9)"),
    (["train", "optimizee=convnet", "optimizer=lstm_sep", "optimizer.groups=['conv: conv*']"],
     "optimizer.groups: no rule takes the optimizee's tensor 'bn1.weight'"),
    (["train", "optimizer=lstm_sep", "optimizer.groups=['conv conv*']"],
     "optimizer.groups: each rule is 'name: pattern [pattern ...]' with a Python identifier as the name, got "
     "'conv conv*'"),
    (["train", "estimator.second_order=maybe"], "estimator.second_order: Value 'maybe' is not a valid bool"),
    (["train", "eval.lr_grid=[]"], "eval.lr_grid: must not be empty"),
    (["train", "eval.lr_grid=[0.1,-1]"], "eval.lr_grid: every value must be positive, got -1.0"),
    (["train", "eval.baselines=[sgd,lbfgs]"],
     f"eval.baselines: got 'lbfgs', allowed values: {', '.join(sorted(OPTIMIZERS.baselines()))}"),
    (["train", "device=tpu"], "device: got 'tpu', allowed values: cpu, cuda, auto"),
    (["train", "threads=0"], "threads: must be >= 1 or null, got 0"),
    (["train", "seed=-1"], "seed: must be >= 0, got -1"),
    (["train", "resume=/nonexistent/run"], "resume: no checkpoint at /nonexistent/run"),
    (["train", "optimizer=adam"],
     f"optimizer: train needs a learned optimizer, got 'adam', allowed values: {', '.join(OPTIMIZERS.learned())}"),
    (["train", "optimizee.dim"], "Error parsing override 'optimizee.dim'"),
    (["train", "hydra.run.dir=/proc/l2l/run"], "/proc/l2l"),
    (["eval"], "checkpoint: eval with optimizer=lstm needs checkpoint=PATH"),
    (["eval", "checkpoint=/nonexistent.pt"], "checkpoint /nonexistent.pt: no such file"),
    (["eval", "optimizer=sgd", "optimizer.lr=-1"], "optimizer.lr: must be a positive number or null (tune), got -1.0"),
    (["eval", "optimizer=sgd", "eval.num_functions=0"], "eval.num_functions: must be >= 1, got 0"),
    (["fly"], "unknown command 'fly', allowed values: train, eval"),
]


def _isolate_env(monkeypatch):
    """main() sets these for its own process; setenv first so monkeypatch restores them for later tests."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setenv("L2L_DEBUG", "0")


@pytest.mark.parametrize("argv, message", MALFORMED, ids=[" ".join(a) for a, _ in MALFORMED])
def test_malformed_command_line(tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _isolate_env(monkeypatch)
    if not any(a.startswith("hydra.run.dir") for a in argv) and argv[0] != "fly":
        argv = [*argv, f"hydra.run.dir={tmp_path / 'run'}"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    GlobalHydra.instance().clear()
    assert info.value.code != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert message in lines[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before any work


def test_debug_flag_shows_the_traceback(tmp_path, monkeypatch):
    _isolate_env(monkeypatch)
    from l2l_cli.core.schemas import ConfigError

    with pytest.raises(ConfigError):
        main(["train", "schedule.unroll=200", "--debug", f"hydra.run.dir={tmp_path}"])
    GlobalHydra.instance().clear()


def test_at_least_twenty_cases():
    assert len(MALFORMED) >= 20
