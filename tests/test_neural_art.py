"""Neural Art: the Gatys losses by hand, the pretrained features offline and frozen, photo-disjoint pools, one
batched CNN pass equal to per-image passes, user images and their errors, and the CLI end to end with pictures."""

from __future__ import annotations

import dataclasses
import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from l2l_cli.core.random_streams import generator
from l2l_cli.core.schemas import ConfigError, TrainLoopConfig
from l2l_cli.meta.policy import plan_training
from l2l_cli.meta.schedules.truncated import TruncatedScheduleConfig
from l2l_cli.meta.trainer import MetaTrainer
from l2l_cli.optimizees import loss_and_grad
from l2l_cli.optimizees.base import DataError
from l2l_cli.optimizees.neural_art import NeuralArtConfig, NeuralArtFamily
from l2l_cli.optimizees.photos import CONTENT_PHOTOS, ContentPools, ContentSource, image_size, read_image
from l2l_cli.optimizees.style_features import (
    FeatureExtractor,
    content_loss,
    gram,
    style_loss,
    total_variation,
    weights_file,
)
from l2l_cli.optimizers.learned.lstm import LSTMConfig
from tests.conftest import run_cli

SMALL = dict(size=32, content=dict(train=12, validation=3, test=4, scales=[1, 2]))


def small_family(**overrides) -> NeuralArtFamily:
    return NeuralArtFamily(NeuralArtConfig(**{**SMALL, **overrides}))


def test_gram_content_and_tv_against_hand_computations():
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, C=2, h=1, w=2)
    torch.testing.assert_close(gram(features), torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 2)
    target = torch.tensor([[[[1.0, 0.0]], [[3.0, 6.0]]]])
    torch.testing.assert_close(content_loss(features, target), torch.tensor([(0 + 4 + 0 + 4) / 4.0]))
    # two layers: the first matches its target exactly, the second is off by 1 in one of four entries
    g1, g2 = gram(features), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    targets = [g1[0], torch.tensor([[1.0, 2.0], [3.0, 5.0]])]
    torch.testing.assert_close(style_loss([g1, g2], targets), torch.tensor([(0.0 + 1 / 4) / 2]))
    image = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])  # vertical: 2, 3; horizontal: 1, 2
    torch.testing.assert_close(total_variation(image), torch.tensor([(4 + 9) / 2 + (1 + 4) / 2]))


def test_feature_extractor_loads_offline_and_is_frozen(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the feature extractor tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    net = FeatureExtractor([0, 4])
    assert len(net.blocks) == 5  # cut after the deepest block used
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.train().training  # eval mode whatever is asked: batch norm keeps its ImageNet statistics
    saved = torch.load(weights_file(), weights_only=True)
    assert torch.equal(net.blocks[4]._project_conv.weight, saved["_blocks.4._project_conv.weight"])
    features = net(torch.rand(2, 3, 32, 32))
    assert set(features) == {0, 4} and features[4].shape == (2, 40, 4, 4)


def test_the_content_photos_include_foolboxs_imagenet_photographs(foolbox_data):
    imagenet = foolbox_data("imagenet")
    assert len(imagenet) == 20
    source = ContentSource.from_config(None)
    assert source.names == list(CONTENT_PHOTOS["builtin"]) + [f"imagenet_{p.stem[len('imagenet_'):]}"
                                                               for p, _ in imagenet]
    assert [p.resolve() for p in source.paths[-20:]] == [p.resolve() for p, _ in imagenet]
    assert image_size(source.paths[-1], 64, "test") == (512, 512)
    assert ContentSource.from_config(None, "builtin").names == list(CONTENT_PHOTOS["builtin"])


def test_pools_are_disjoint_by_photo_and_reproducible(foolbox_data):
    pools = ContentPools(None, 32, (1, 2), {"train": 6, "validation": 3, "test": 4}, 2, 3, split_seed=0)
    photos = {split: set(names) for split, names in pools.record()["photos"].items()}
    assert not (photos["train"] & photos["validation"] or photos["train"] & photos["test"]
                or photos["validation"] & photos["test"])
    assert photos["train"] | photos["validation"] | photos["test"] == set(CONTENT_PHOTOS["imagenet"])
    assert len(photos["validation"]) == 2 and len(photos["test"]) == 3
    test = pools.pool("test")
    assert test.shape == (4, 3, 32, 32) and 0 <= test.min() and test.max() <= 1
    again = ContentPools(None, 32, (1, 2), {"train": 99, "validation": 3, "test": 4}, 2, 3, split_seed=0)
    assert torch.equal(again.pool("test"), test)  # a pool does not change with another pool's size
    assert again.record()["crops_sha256"]["test"] == pools.record()["crops_sha256"]["test"]
    other = ContentPools(None, 32, (1, 2), {"train": 6, "validation": 3, "test": 4}, 2, 3, split_seed=1)
    assert other.record()["photos"] != pools.record()["photos"]
    # every test crop is its recorded window of a test photograph, area-averaged down by its scale
    for crop, (k, top, left, side) in zip(test, pools.boxes["test"], strict=True):
        assert pools.source.names[k] in photos["test"]
        window = read_image(pools.source.paths[k], 32, "test")[:, top: top + side, left: left + side]
        torch.testing.assert_close(torch.nn.functional.avg_pool2d(window.unsqueeze(0), side // 32)[0], crop)


def test_batched_loss_and_gradient_equal_per_image_passes():
    family = small_family()
    problem = family.sample(3, 5, generator(0, "train"))
    theta = family.initial_params(problem) + 0.3 * torch.randn(3, family.num_params, generator=generator(1, "train"))
    losses, grad = loss_and_grad(family, problem, theta, 2)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    for i in range(3):
        one_loss, one_grad = loss_and_grad(family, family.select(problem, i, i + 1), theta[i: i + 1], 2)
        torch.testing.assert_close(one_loss, losses[i: i + 1], rtol=1e-5, atol=1e-7)
        # float32 through a CNN: entries far below the gradient's scale carry summation-order noise
        torch.testing.assert_close(one_grad, grad[i: i + 1], rtol=1e-4, atol=1e-5 * float(grad.abs().max()))
    alpha, beta, gamma = family.weights
    terms = family.loss_terms(problem, theta)
    torch.testing.assert_close(losses, alpha * terms["content"] + beta * terms["style"] + gamma * terms["tv"])


def test_content_init_starts_at_the_content_image_and_sigmoid_keeps_pixels_in_range():
    family = small_family()
    problem = family.sample(2, 5, generator(0, "test"), split="test")
    images = family.images(family.initial_params(problem))
    torch.testing.assert_close(images, problem.content.clamp(0.02, 0.98))
    assert family.loss_terms(problem, family.initial_params(problem))["content"].max() < 1e-2
    far = family.images(torch.full((1, family.num_params), 50.0))
    assert far.max() <= 1 and far.min() >= 0
    held_out = family.sample(4, 5, generator(5, "test"), split="test")
    torch.testing.assert_close(held_out.content, family.pools.pool("test"))  # the fixed test set, in order
    with pytest.raises(DataError, match=r"optimizee\.content\.test: the test pool holds 4 crops, 5"):
        family.sample(5, 5, generator(0, "test"), split="test")


def test_train_styles_give_each_meta_training_function_its_own_style_and_leave_held_out_ones_alone():
    family = small_family(train_styles=["brick", "gravel"])
    one_style = {name: small_family(style=name) for name in ("ihc", "brick", "gravel")}
    problem = family.sample(12, 5, generator(0, "train"))
    theta = family.initial_params(problem) + 0.3 * torch.randn(12, family.num_params, generator=generator(1, "train"))
    losses = family.loss(problem, theta, 0)
    drawn = set()
    for i in range(12):  # each function's loss is the one-style family's with that function's style
        style = next(name for name, single in one_style.items()
                     if torch.equal(problem.style[i], single.style_images[0]))
        drawn.add(style)
        single = one_style[style]
        alone = single.loss(dataclasses.replace(family.select(problem, i, i + 1), style_grams=single.style_grams),
                            theta[i: i + 1], 0)
        torch.testing.assert_close(losses[i: i + 1], alone)
    assert drawn == {"ihc", "brick", "gravel"}
    for split in ("validation", "test"):  # baselines are tuned and tested on `style`
        held_out = family.sample(3, 5, generator(0, split), split=split)
        assert all(torch.equal(image, family.style_images[0]) for image in held_out.style)
    # a family of one style draws the same crops as before train_styles existed
    torch.testing.assert_close(one_style["ihc"].sample(12, 5, generator(0, "train")).content, problem.content)
    assert [r["style"] for r in family.data_record()["train_styles"]] == ["brick", "gravel"]
    assert "train_styles" not in one_style["ihc"].data_record()
    repeated = family.repeat(family.select(problem, 2, 4), 2)
    assert torch.equal(repeated.style_grams[0][3], problem.style_grams[0][3])
    with pytest.raises(ConfigError, match=r"optimizee\.train_styles: must name styles other than optimizee\.style"):
        NeuralArtConfig(train_styles=["ihc"])
    with pytest.raises(DataError, match=r"optimizee\.train_styles\[1\]: 'nope' is neither a file nor a built-in"):
        small_family(train_styles=["brick", "nope"])


def _write_png(path, size, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_user_content_dir_and_style_file(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        _write_png(photos / f"p{i}.png", (70, 50), seed=i)
    style = _write_png(tmp_path / "style.png", (40, 40), seed=9)
    family = small_family(content_dir=str(photos), style=str(style),
                          content=dict(train=5, validation=2, test=2, validation_photos=1, test_photos=1, scales=[1]))
    record = family.data_record()
    assert record["source"].startswith("image files under") and record["style"] == "style.png"
    assert sorted(sum(record["photos"].values(), [])) == ["p0.png", "p1.png", "p2.png", "p3.png"]
    problem = family.sample(2, 3, generator(0, "train"))
    assert torch.isfinite(loss_and_grad(family, problem, family.initial_params(problem), 0)[1]).all()
    json.dumps(record)


def test_bad_images_fail_with_one_line_naming_the_file(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        _write_png(photos / f"p{i}.png", (64, 64), seed=i)
    (photos / "broken.jpg").write_bytes(b"not an image")
    content = dict(train=20, validation=1, test=1, validation_photos=1, test_photos=1, scales=[1])
    with pytest.raises(DataError) as err:
        family = small_family(content_dir=str(photos), content=content)
        for split in ("train", "validation", "test"):
            family.pools.pool(split)
    assert "broken.jpg: not an image" in str(err.value) and "\n" not in str(err.value)
    tiny = _write_png(tmp_path / "tiny.png", (20, 12))
    with pytest.raises(DataError, match=r"optimizee\.style: .*tiny\.png: 20x12 pixels, too small"):
        small_family(style=str(tiny))
    with pytest.raises(DataError, match=r"optimizee\.style: 'nope\.png' is neither a file nor a built-in image"):
        small_family(style="nope.png")
    with pytest.raises(DataError, match=r"optimizee\.content_dir: .* is not a directory"):
        small_family(content_dir=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"optimizee\.size: must be a multiple of 8 \(the stride of block 4\)"):
        NeuralArtConfig(size=36)
    with pytest.raises(ConfigError, match=r"optimizee\.style_layers: EfficientNet-Lite0 blocks are 0\.\.15, got 16"):
        NeuralArtConfig(style_layers=[2, 16])


@pytest.mark.slow
def test_generalization_experiment_writes_tables_and_pictures(tmp_path):
    """A tiny meta-training, then the user's command: the checkpoint at its size, at double the size and on the new
    style, each with a picture grid in a PNG and in TensorBoard."""
    cfg = NeuralArtConfig(**SMALL, batch_size=2)
    setup = plan_training(family=NeuralArtFamily(cfg), optimizee=cfg, optimizer=LSTMConfig(),
                          schedule=TruncatedScheduleConfig(num_steps=4, unroll=2),
                          loop=TrainLoopConfig(iterations=2, val_every=1, val_functions=2, workers=1), seed=0,
                          data_seed=0, device=torch.device("cpu"), out_dir=tmp_path / "train", compile=False)
    MetaTrainer(setup).fit()
    out = tmp_path / "gen"
    tiny = ["optimizee.size=32", "optimizee.content.train=12", "optimizee.content.validation=3",
            "optimizee.content.test=4", "optimizee.content.scales=[1,2]", "schedule.num_steps=4", "schedule.unroll=2",
            "eval.num_functions=3", "eval.val_functions=2", "eval.lr_grid=[0.1,1.0]", "eval.refine_lr=0"]
    gen = run_cli("eval", "experiment=neural_art_generalization", f"checkpoint={tmp_path}/train/checkpoints/best.pt",
                  *tiny, "eval.variants.size_128.optimizee.size=64", "threads=1", f"hydra.run.dir={out}",
                  env={"COLUMNS": "200"})
    assert gen.returncode == 0, gen.stderr
    lines = (out / "generalization.csv").read_text().splitlines()
    assert lines[0] == "variant,num_steps,lstm,sgd,nag,rmsprop,adam"
    assert [line.split(",")[0] for line in lines[1:]] == ["base", "size_128", "new_style"]
    assert all(float(x) > 0 for line in lines[1:] for x in line.split(",")[2:])
    variants = json.loads((out / "results.json").read_text())["variants"]
    assert variants["size_128"]["optimizee"]["size"] == 64
    assert variants["new_style"]["optimizee"]["style"] == "hubble_deep_field"
    for variant, size, style in (("base", 32, "ihc"), ("size_128", 64, "ihc"), ("new_style", 32, "hubble_deep_field")):
        picture = Image.open(out / variant / "pictures.png")
        assert picture.size[0] > picture.size[1] * 0.8  # four columns of three rows, titled
        results = json.loads((out / variant / "results.json").read_text())
        assert results["optimizee"]["size"] == size and results["data"]["style"] == style
        assert results["data"]["crops"]["test"] == 4 and len(results["data"]["crops_sha256"]["test"]) == 16
        _assert_tensorboard_image(out / variant / "tb" / "pictures", width=4 * (size + 4), height=3 * (size + 4))
    assert "size_128" in gen.stdout and "new_style" in gen.stdout


def _assert_tensorboard_image(run_dir, width: int, height: int) -> None:
    """The grid is in TensorBoard's images tab at its pixel size: rows = test functions, 4 columns."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("pictures/final")
    assert (image.width, image.height) == (width, height)
