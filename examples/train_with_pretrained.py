"""Train a small classifier on the embedded digits with the shipped MNIST learned optimizer, next to Adam at the
learning rate tuned for it: `python examples/train_with_pretrained.py`.

The model is the one the optimizer was meta-trained on (784-20-10, sigmoid, weights ~ N(0, 0.01^2)), trained for
100 steps of 128 images from 1000 training images; both optimizers start from the same weights and see the same
minibatches. Run it with more steps or another model to see where the learned optimizer stops generalising.
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from l2l_cli import LearnedOptimizer, pretrained
from l2l_cli.optimizees.digits import make_pools


def main(steps: int = 100, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    pools = make_pools(None, split_seed=0, validation=1000, test=1000)
    images, labels = pools.train[0][:1000], pools.train[1][:1000]
    test_images, test_labels = pools.test
    model = nn.Sequential(nn.Linear(784, 20), nn.Sigmoid(), nn.Linear(20, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.01)
    batches = torch.randint(len(images), (steps, 128))
    adam_lr = pretrained.record("mnist")["evaluation"]["optimizers"]["adam"]["lr"]
    results = {}
    for name in ("learned", "adam"):
        net = copy.deepcopy(model)
        opt = (LearnedOptimizer(net.parameters(), checkpoint="pretrained:mnist") if name == "learned"
               else torch.optim.Adam(net.parameters(), lr=adam_lr))
        start = time.perf_counter()
        for idx in batches:
            opt.zero_grad()
            loss = F.cross_entropy(net(images[idx]), labels[idx])
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            train_loss = F.cross_entropy(net(images), labels).item()
            test_loss = F.cross_entropy(net(test_images), test_labels).item()
        results[name] = {"train_loss": train_loss, "test_loss": test_loss, "seconds": seconds}
        print(f"{name:<8} {'(lr %.3g)' % adam_lr if name == 'adam' else '(pretrained:mnist)':<19} after {steps} "
              f"steps: loss on its 1000 training images {train_loss:.4f}, on 1000 held-out images {test_loss:.4f} "
              f"({seconds:.2f} s)")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.seed)
