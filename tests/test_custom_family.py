"""Bring your own optimizee (`optimizee=custom optimizee.target=...`): the README's worked example end to end,
worker processes, and one-line errors naming the target. The contract tests run the same example too."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import ROOT, run_cli

from l2l_cli.core.checkpoints import load_checkpoint
from l2l_cli.core.schemas import DEFAULT_BASELINES, ConfigError, TrainLoopConfig
from l2l_cli.meta.launch import run_training
from l2l_cli.meta.policy import plan_training
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.optimizees import build_family
from l2l_cli.optimizees.custom import CustomConfig
from l2l_cli.optimizers.learned.lstm import LSTMConfig

EXAMPLE = "examples/logistic_family.py:make_family"


@pytest.mark.slow
def test_the_worked_example_trains_and_evaluates_against_every_baseline(tmp_path):
    train = run_cli("train", "optimizee=custom", f"optimizee.target={EXAMPLE}", "debug=tiny",
                    f"hydra.run.dir={tmp_path / 'train'}")
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    results = json.loads((tmp_path / "train" / "eval" / "results.json").read_text())
    assert list(results["optimizers"]) == ["lstm", *DEFAULT_BASELINES]
    assert all(r["tuned"] for r in results["learning_rates"].values())
    assert results["optimizee"]["target"] == EXAMPLE
    # the module:callable form, from the working directory, on a checkpoint trained with the file form
    evaluate = run_cli("eval", "optimizee=custom", "optimizee.target=examples.logistic_family:make_family",
                       "+optimizee.args.examples=32", "schedule.num_steps=10", "schedule.unroll=5",
                       "eval.num_functions=16", "eval.val_functions=8", "eval.lr_grid=[0.1,1.0]",
                       f"checkpoint={tmp_path / 'train' / 'checkpoints' / 'best.pt'}",
                       f"hydra.run.dir={tmp_path / 'eval'}", cwd=ROOT)
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["optimizee"]["args"] == {"examples": 32}


def test_ranks_rebuild_the_family_from_its_target(tmp_path):
    """train.workers=2: the other rank gets the family by its target (CustomFamily pickles as its config)."""
    cfg = CustomConfig(target=str(ROOT / EXAMPLE), batch_size=4)
    family = build_family(cfg)

    def trained(workers, out):
        setup = plan_training(family=family, optimizee=cfg, optimizer=LSTMConfig(hidden_size=6),
                              schedule=TruncatedScheduleConfig(num_steps=6, unroll=3),
                              loop=TrainLoopConfig(iterations=2, val_every=10, val_functions=4, evaluate=False,
                                                   workers=workers),
                              seed=0, data_seed=0, device=torch.device("cpu"), out_dir=tmp_path / out, compile=False)
        run_training(setup, 1)
        return load_checkpoint(tmp_path / out / "checkpoints" / "last.pt")["model"]

    single, ranks = trained(1, "one"), trained(2, "two")
    for key in single:
        torch.testing.assert_close(ranks[key], single[key], rtol=1e-5, atol=1e-7)


def test_selecting_functions_of_a_dict_problem_equals_the_batch():
    family = build_family(CustomConfig(target=str(ROOT / EXAMPLE)))
    problem = family.sample(5, 3, torch.Generator().manual_seed(0), "cpu", "validation")
    part = family.select(problem, 1, 4)
    assert len(part) == 3 and len(problem) == 5
    theta = torch.randn(5, family.num_params)
    torch.testing.assert_close(family.loss(part, theta[1:4], 0), family.loss(problem, theta, 0)[1:4])


BROKEN = {
    "module": ("no_such_module_xyz:make", r"cannot import 'no_such_module_xyz' \(ModuleNotFoundError"),
    "file": ("{tmp}/missing.py:make", r"cannot import '.*missing.py' \(FileNotFoundError"),
    "attribute": ("{tmp}/fam.py:nope", r"'.*fam.py' has no callable 'nope'"),
    "raises": ("{tmp}/fam.py:raises", r"calling it failed \(RuntimeError: no data here\)"),
    "type": ("{tmp}/fam.py:number", r"it returned a int without a sample\(\) method"),
    "num_params": ("{tmp}/fam.py:no_params", r"num_params must be an int >= 1, got None"),
    "theta": ("{tmp}/fam.py:bad_theta", r"initial_params must return a float tensor of shape \(n, num_params\) = "
                                        r"\(2, 3\), got \(2, 4\)"),
    "loss": ("{tmp}/fam.py:bad_loss", r"loss must return one value per function, shape \(2,\), got \(\)"),
}

FAMILY_FILE = '''
import torch

class Fam:
    num_params = 3
    def __init__(self, width=3, reduce=False):
        self.width, self.reduce = width, reduce
    def sample(self, n, num_steps, gen, device, split):
        return torch.randn(n, 3, generator=gen)
    def initial_params(self, problem):
        return torch.zeros(problem.shape[0], self.width)
    def loss(self, problem, theta, step):
        per = ((theta - problem) ** 2).sum(1)
        return per.sum() if self.reduce else per

class NoParams(Fam):
    num_params = None

def raises():
    raise RuntimeError("no data here")

def number():
    return 3

def no_params():
    return NoParams()

def bad_theta():
    return Fam(width=4)

def bad_loss():
    return Fam(reduce=True)
'''


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_target_fails_with_one_line_naming_it(tmp_path, case):
    (tmp_path / "fam.py").write_text(FAMILY_FILE)
    target, message = BROKEN[case]
    target = target.format(tmp=tmp_path)
    with pytest.raises(ConfigError, match=message) as info:
        build_family(CustomConfig(target=target))
    assert str(info.value).startswith(f"optimizee.target={target}: ") and "\n" not in str(info.value)


def test_a_missing_target_fails_with_one_line(tmp_path):
    result = run_cli("train", "optimizee=custom", "debug=tiny", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "l2l: error: optimizee.target: required with optimizee=custom" in result.stderr
    with pytest.raises(ConfigError, match="optimizee.target: required"):
        replace(CustomConfig(target="a:b"), target=None)
