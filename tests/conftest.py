"""Shared fixtures: compose the real configs with tiny sizes; every test writes under its own tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from l2l_cli.cli import config_dir
from l2l_cli.commands.config import register_schemas

ROOT = Path(__file__).resolve().parent.parent

# the debug preset (conf/debug/tiny.yaml) users run as a smoke test, on a smaller quadratic, without the evaluation
TINY_TRAIN = ["debug=tiny", "optimizee.batch_size=8", "optimizee.dim=4", "train.evaluate=false"]


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1)  # tests are tiny; one thread avoids oversubscribing the 2 CI cores
    yield


@pytest.fixture
def compose_cfg():
    """compose_cfg(command, overrides) -> DictConfig, as the CLI would compose it (hydra section included)."""
    register_schemas()

    def _compose(command: str, overrides=()):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name=command):
            return compose(config_name=command, overrides=list(overrides), return_hydra_config=True)

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(*args, cwd=None, env=None, timeout=300):
    """Run `python -m l2l_cli ...` as a subprocess; returns CompletedProcess with text output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", **(env or {})}
    return subprocess.run([sys.executable, "-m", "l2l_cli", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
