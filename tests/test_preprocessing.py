import math

import pytest
import torch

from l2l_cli.optimizers.learned.preprocessing import num_features, preprocess


def test_paper_formula_both_branches():
    p = 10.0
    big = torch.tensor([3.0, -0.5, 1e-3, -math.exp(-p)])  # |x| >= e^-p (the last one exactly on the boundary)
    small = torch.tensor([1e-5, -2e-6, 0.0])  # |x| < e^-p ~ 4.54e-5
    out_big = preprocess(big, "paper", p)
    expected_big = torch.stack((big.abs().log() / p, big.sign()), -1)
    torch.testing.assert_close(out_big, expected_big)
    out_small = preprocess(small, "paper", p)
    expected_small = torch.stack((torch.full_like(small, -1.0), small * math.exp(p)), -1)
    torch.testing.assert_close(out_small, expected_small)


def test_paper_is_differentiable_without_nan():
    x = torch.tensor([0.0, 1e-7, 2.0, -3.0], requires_grad=True)
    preprocess(x, "paper", 10.0).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_deepmind_variant_clamps():
    k = 5.0
    x = torch.tensor([1e-9, 0.5, -20.0])
    out = preprocess(x, "deepmind", k)
    assert out[0, 0] == -1.0  # log part clamped at -1
    torch.testing.assert_close(out[1, 0], torch.log(torch.tensor(0.5) + torch.finfo(torch.float32).eps) / k)
    assert out[1, 1] == 1.0 and out[2, 1] == -1.0  # sign part clamped to [-1, 1]
    torch.testing.assert_close(out[0, 1], torch.tensor(1e-9 * math.exp(k)))


@pytest.mark.parametrize("kind", ["none", "paper", "deepmind"])
def test_feature_count(kind):
    assert preprocess(torch.randn(7), kind).shape == (7, num_features(kind))
