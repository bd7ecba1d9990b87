"""Every config option composes and instantiates; bad values fail with the key named."""

import json
import re

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from l2l_cli.cli.config import continue_recorded, to_objects, upgrade_recorded
from l2l_cli.core.schemas import ConfigError
from l2l_cli.optimizees import build_family
from l2l_cli.optimizers.learned.lstm import LSTMConfig


@pytest.mark.parametrize("command", ["train", "eval"])
def test_the_command_names_its_job(compose_cfg, command):
    """Outputs land in outputs/<command>/...; every family x optimizer composition is in tests/test_contracts.py."""
    assert compose_cfg(command, []).hydra.job.name == command


def test_the_papers_sizes(compose_cfg):
    quad = to_objects(compose_cfg("train", []))
    mnist = to_objects(compose_cfg("train", ["optimizee=mnist"]))
    assert build_family(quad.optimizee).num_params == 10
    assert build_family(mnist.optimizee).num_params == 784 * 20 + 20 + 20 * 10 + 10
    assert isinstance(quad.optimizer, LSTMConfig) and (quad.optimizer.hidden_size, quad.optimizer.layers) == (20, 2)


@pytest.mark.parametrize("preprocess", ["none", "paper", "deepmind"])
@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
def test_enum_values_compose(compose_cfg, preprocess, distribution):
    conf = to_objects(compose_cfg("train", [f"optimizer.preprocess={preprocess}",
                                            f"optimizee.distribution={distribution}"]))
    assert conf.optimizer.preprocess == preprocess and conf.optimizee.distribution == distribution


def test_user_keys_from_the_issue_exist(compose_cfg):
    cfg = compose_cfg("train", ["optimizer.hidden_size=40", "schedule.unroll=10", "seed=3", "device=auto",
                                "optimizee.dim=5", "optimizee.batch_size=4", "optimizer.layers=3",
                                "optimizer.output_scale=0.5", "train.iterations=2", "train.meta_lr=0.1",
                                "train.val_every=1", "train.checkpoint_every=1", "train.clip_grad=null",
                                "estimator.second_order=true", "eval.num_functions=3", "eval.lr_grid=[0.1]",
                                "resume=true"])
    conf = to_objects(cfg)
    assert conf.optimizer.hidden_size == 40 and conf.schedule.unroll == 10 and conf.train.clip_grad is None
    assert conf.estimator.name == "tbptt" and conf.estimator.second_order is True
    baseline = to_objects(compose_cfg("eval", ["optimizer=adam", "optimizer.lr=0.3", "checkpoint=x.pt"])).optimizer
    assert baseline.lr == 0.3


@pytest.mark.parametrize("override, key", [
    ("schedule.unroll=200", "schedule.unroll"),
    ("optimizee.dim=0", "optimizee.dim"),
    ("optimizee.batch_size=0", "optimizee.batch_size"),
    ("optimizee.distribution=cauchy", "optimizee.distribution"),
    ("optimizer.preprocess=log", "optimizer.preprocess"),
    ("optimizer.output_scale=-1", "optimizer.output_scale"),
    ("train.meta_lr=0", "train.meta_lr"),
    ("eval.lr_grid=[]", "eval.lr_grid"),
    ("eval.lr_grid=[0.1,-1]", "eval.lr_grid"),
    ("eval.baselines=[sgd,lbfgs]", "eval.baselines"),
    ("device=tpu", "device"),
])
def test_bad_values_name_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_objects(compose_cfg("train", [override]))


@pytest.mark.parametrize("override", ["optimizee.dim=abc", "optimizee.nope=1", "optimizee=nope"])
def test_type_errors_and_unknown_keys_fail_at_compose(compose_cfg, override):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg("train", [override])
    assert "optimizee" in str(info.value)


def test_budgets_follow_the_optimizee_family(compose_cfg):
    quad = to_objects(compose_cfg("train", []))
    mnist = to_objects(compose_cfg("train", ["optimizee=mnist"]))
    assert (quad.train.iterations, quad.eval.num_functions) == (1500, 1024)
    assert (mnist.train.iterations, mnist.train.val_every, mnist.eval.num_functions, mnist.eval.val_functions) == (
        200, 10, 64, 32)
    assert (quad.train.population, mnist.train.population) == (1, 2)
    assert (mnist.schedule.weighting, mnist.train.meta_lr_schedule, mnist.train.ema_decay) == ("log", "cosine", 0.95)
    explicit = to_objects(compose_cfg("train", ["optimizee=mnist", "train.iterations=7", "eval.num_functions=3"]))
    assert (explicit.train.iterations, explicit.eval.num_functions) == (7, 3)


def test_presets_compose(compose_cfg):
    gen = compose_cfg("eval", ["experiment=mnist_generalization", "checkpoint=x.pt"])
    assert gen.optimizee.name == "mnist" and list(gen.eval.variants) == ["base", "steps_200", "hidden_40",
                                                                        "layers_2", "relu"]
    long = to_objects(compose_cfg("train", ["experiment=long_horizon", "estimator=pes"]))
    assert (long.optimizee.name, long.schedule.num_steps, long.schedule.unroll) == ("quadratic", 1000, 50)
    assert long.schedule.weighting == "log" and long.estimator.name == "pes" and long.train.iterations == 300
    for preset, family, optimizer, patience in (("convnet_long", "convnet", "lstm_sep", 6),
                                                ("neural_art_long", "neural_art", "lstm", 5)):
        recipe = to_objects(compose_cfg("train", [f"experiment={preset}"]))
        assert (recipe.optimizee.name, recipe.optimizer.name, recipe.train.patience) == (family, optimizer, patience)
        assert recipe.train.iterations >= 1500 and recipe.schedule.unroll == 20
    sub = to_objects(compose_cfg("train", ["experiment=convnet_long", "optimizee.data.labels=[5,6,7,8,9]"]))
    assert sub.optimizee.data.labels == [5, 6, 7, 8, 9] and sub.train.meta_lr_schedule == "constant"
    search = compose_cfg("train", ["hparams_search=meta_lr"])
    assert search.hydra.sweeper.params["train.meta_lr"] == "tag(log, interval(1e-4, 3e-2))"
    assert "optuna" in search.hydra.sweeper._target_.lower()
    slurm = compose_cfg("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    assert slurm.hydra.launcher.partition == "gpu" and slurm.hydra.launcher.cpus_per_task == 4
    assert "SlurmLauncher" in slurm.hydra.launcher._target_


def test_a_run_recorded_before_the_estimator_group_resumes_with_its_estimator():
    """run.json of a run from before `estimator=` was a group: its train.estimator / train.es / train.bptt /
    train.second_order become the estimator group, so `resume` continues it as it was trained."""
    old = {"train": {"iterations": 5, "estimator": "pes", "es": {"sigma": 0.02, "pairs": 3}, "bptt": "manual",
                     "second_order": False}, "optimizee": {"name": "quadratic"}}
    new = upgrade_recorded(old)
    assert new["estimator"] == {"name": "pes", "sigma": 0.02, "pairs": 3} and new["train"] == {"iterations": 5}
    tbptt = upgrade_recorded({"train": {"bptt": "autograd", "second_order": True, "es": {"sigma": 0.01}}})
    assert tbptt["estimator"] == {"name": "tbptt", "bptt": "autograd", "second_order": True}
    assert upgrade_recorded({"train": {}, "estimator": {"name": "es"}})["estimator"] == {"name": "es"}


@pytest.mark.parametrize("config", ["junk", {"train": [1, 2], "optimizee": {"name": "quadratic"}}, [1],
                                    {"optimizee": "quadratic"}])
def test_a_recorded_config_that_is_not_one_resumes_with_this_command_line(compose_cfg, tmp_path, config, caplog):
    (tmp_path / "run.json").write_text(json.dumps({"config": config}))
    cfg = compose_cfg("train", ["debug=tiny"])
    assert continue_recorded(cfg, tmp_path, ["resume=true"]) is cfg
    assert "has no readable run.json" in caplog.text


def test_a_resume_that_names_no_family_continues_the_recorded_one(compose_cfg, tmp_path):
    """`l2l train resume=true hydra.run.dir=RUN` continues RUN's family and architecture (the defaults it composed
    are not a request to switch); naming another one, or another seed, fails with one line."""
    def job(*overrides):  # a job's config, as the task function gets it and run.json records it
        cfg = compose_cfg("train", overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    config = OmegaConf.to_container(job("experiment=convnet_long", "seed=0"), resolve=True)
    (tmp_path / "run.json").write_text(json.dumps({"config": config}))
    merged = continue_recorded(job("resume=true"), tmp_path, ["resume=true"])
    assert (merged.optimizee.name, merged.optimizer.name, merged.train.patience) == ("convnet", "lstm_sep", 6)
    for args, message in ((["optimizee=mnist"], "cannot switch to optimizee=mnist"),
                          (["experiment=neural_art_long"], "cannot switch to optimizee=neural_art"),
                          (["seed=1"], "has seed=0; a resumed run continues its random streams (got seed=1")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            continue_recorded(job("resume=true", *args), tmp_path, ["resume=true", *args])
