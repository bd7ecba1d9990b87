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
# every `l2l` a test starts runs on one torch thread unless the test sets `threads=`: the xdist workers already keep
# each core busy, and a second OpenMP thread per process only spins against the other worker
os.environ.setdefault("OMP_NUM_THREADS", "1")


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


# Tests that share a fixture built once per session or module (a CLI run, a sweep) form one xdist group, so that
# fixture is built on one worker only; the SLURM tests form one too, so their jobs never queue behind each other.
SHARED_FIXTURES = ("tiny_run", "sweeps", "uninterrupted")
GROUPED_MODULES = ("test_slurm",)
# Modules with the longest tests start first, so neither worker is left with a long one at the end.
LONGEST_FIRST = ("test_sweeps", "test_slurm", "test_reliability", "test_rundirs", "test_distributed", "test_cli",
                 "test_population", "test_mnist")


def _module(item) -> str:
    return item.path.stem


def order_and_group(items) -> None:
    for item in items:
        shared = [name for name in SHARED_FIXTURES if name in getattr(item, "fixturenames", ())]
        group = shared[0] if shared else (_module(item) if _module(item) in GROUPED_MODULES else None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item), len(rank)))  # stable: the order within a module stays


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (its own hook of this name)
def pytest_collection_modifyitems(config, items):
    order_and_group(items)
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

@pytest.fixture
def fashion_mnist():
    """The installed Fashion-MNIST directory (scripts/install_data.sh); the test is skipped without it, and fails
    under L2L_REQUIRE_DATA=1 (CI installs it)."""
    from l2l_cli.optimizees.images import FASHION_MNIST_DIR, fashion_mnist_installed

    if not fashion_mnist_installed():
        reason = f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} (scripts/install_data.sh installs it)"
        if os.environ.get("L2L_REQUIRE_DATA") == "1":
            pytest.fail(f"L2L_REQUIRE_DATA=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return FASHION_MNIST_DIR


@pytest.fixture
def foolbox_data():
    """foolbox's sample images (the Makefile installs the wheel with --no-deps; nothing of it is imported): skipped
    without them, failed under L2L_REQUIRE_DATA=1 (CI)."""
    from l2l_cli.optimizees.photos import foolbox_images

    if not foolbox_images("cifar10"):
        reason = "foolbox's sample images are not installed (make install: pip install --no-deps foolbox)"
        if os.environ.get("L2L_REQUIRE_DATA") == "1":
            pytest.fail(f"L2L_REQUIRE_DATA=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return foolbox_images


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


# the evaluation of the shared tiny run (tiny_run), also what test_reliability repeats to check bit-identity
TINY_EVAL = ["optimizee.dim=4", "eval.num_steps=10", "eval.num_functions=32", "eval.val_functions=16",
             "eval.lr_grid=[0.01,0.1,1.0]"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny `l2l train` (TINY_TRAIN) and an `l2l eval` of its best.pt (TINY_EVAL), as subprocesses, shared by
    every test that only reads such a run: (root, train, evaluate) with the runs in root/train and root/eval."""
    root = tmp_path_factory.mktemp("tiny_run")
    train = run_cli("train", *TINY_TRAIN, f"hydra.run.dir={root / 'train'}")
    assert train.returncode == 0, train.stdout + train.stderr
    evaluate = run_cli("eval", *TINY_EVAL, f"checkpoint={root / 'train' / 'checkpoints' / 'best.pt'}",
                       f"hydra.run.dir={root / 'eval'}")
    assert evaluate.returncode == 0, evaluate.stdout + evaluate.stderr
    return root, train, evaluate


def spawned_children(parent: int) -> list[int]:
    """The processes ``parent`` spawned with multiprocessing (not its resource tracker)."""
    pids = []
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except FileNotFoundError:  # it has just ended
            continue
        if "multiprocessing.spawn" in cmdline and "resource_tracker" not in cmdline:
            pids.append(int(child))
    return pids


def run_cli(*args, cwd=None, env=None, timeout=300):
    """Run `python -m l2l_cli ...` as a subprocess; returns CompletedProcess with text output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", **(env or {})}
    return subprocess.run([sys.executable, "-m", "l2l_cli", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def cli_one_line_error(argv, capsys, monkeypatch) -> str:
    """`l2l <argv>` in this process (fast: no interpreter start): it must exit 2 with one line `l2l: error: ...` on
    stderr, which is returned."""
    from hydra.core.global_hydra import GlobalHydra

    from l2l_cli.cli.main import main

    # main() sets these for its own process; setenv first so monkeypatch restores them for later tests
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setenv("L2L_DEBUG", "0")
    try:
        with pytest.raises(SystemExit) as info:
            main(list(argv))
    finally:
        GlobalHydra.instance().clear()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("l2l: error: "), lines
    return lines[0]
