"""A family of your own for `l2l train optimizee=custom optimizee.target=examples/logistic_family.py:make_family`:
L2-regularised logistic regression on scikit-learn's breast-cancer data, each function on its own 64 examples of a
split (the penalty keeps the minimum finite: 64 examples of 30 features are often separable)."""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer


class LogisticRegression:
    def __init__(self, examples: int = 64, l2: float = 1e-3):
        X, y = load_breast_cancer(return_X_y=True)
        X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))  # fixed, disjoint splits
        cut = {"train": order[:339], "validation": order[339:454], "test": order[454:]}
        self.X, self.y, self.cut, self.examples, self.l2 = X, torch.tensor(y, dtype=torch.float32), cut, examples, l2
        self.num_params = X.shape[1] + 1  # weights and bias

    def sample(self, n, num_steps, gen, device="cpu", split="train"):
        rows = self.cut[split][torch.randint(len(self.cut[split]), (n, self.examples), generator=gen)]
        return {"X": self.X[rows].to(device), "y": self.y[rows].to(device), "theta0": torch.zeros(n, self.num_params)}

    def initial_params(self, problem):
        return problem["theta0"].clone()

    def loss(self, problem, theta, step):
        logits = torch.einsum("nbd,nd->nb", problem["X"], theta[:, :-1]) + theta[:, -1:]
        data = F.binary_cross_entropy_with_logits(logits, problem["y"], reduction="none").mean(1)
        return data + 0.5 * self.l2 * theta[:, :-1].pow(2).sum(1)


def make_family(**kwargs):
    return LogisticRegression(**kwargs)
