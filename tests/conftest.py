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

from l2l_cli.cli.config import config_dir, register_schemas

ROOT = Path(__file__).resolve().parent.parent


def slurm_cluster() -> str | None:
    """Why the tests marked `slurm` cannot run here, or None when a cluster answers with an idle node."""
    import shutil

    if shutil.which("sinfo") is None:
        return "no SLURM here (no sinfo); as root, tests/slurm/start.sh installs and starts a one-node cluster"
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed ({exc}); start a cluster with tests/slurm/start.sh"
    if out.returncode != 0 or not any(s.strip("*") in ("idle", "mix", "alloc") for s in out.stdout.split()):
        return "no SLURM node answers (sinfo); start one with tests/slurm/start.sh"
    return None


def pytest_collection_modifyitems(config, items):
    slurm_items = [item for item in items if "slurm" in item.keywords]
    if not slurm_items:
        return
    reason = slurm_cluster()
    if reason is None:
        return
    required = os.environ.get("L2L_REQUIRE_SLURM") == "1"  # CI: a SLURM test that cannot run is a failure
    for item in slurm_items:
        item.add_marker(pytest.mark.slurm_missing(reason) if required else pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _fail_without_required_slurm(request):
    marker = request.node.get_closest_marker("slurm_missing")
    if marker is not None:
        pytest.fail(f"L2L_REQUIRE_SLURM=1 but {marker.args[0]}", pytrace=False)

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
