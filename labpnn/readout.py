"""The digital readout on the last unit's measured features, and a quick linear probe per unit."""

from __future__ import annotations

import numpy as np
import torch


def fit_readout(features: np.ndarray, labels: np.ndarray, n_classes: int, *, steps: int,
                weight_decay: float) -> dict[str, np.ndarray]:
    """Softmax regression on standardised features (full-batch L-BFGS, deterministic)."""
    mean = features.mean(0)
    std = features.std(0) + 1e-6
    f = torch.as_tensor((features - mean) / std, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    weight = torch.zeros(n_classes, f.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(f @ weight.T + bias, y) + weight_decay * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"weight": weight.detach().numpy().astype(np.float32), "bias": bias.detach().numpy().astype(np.float32),
            "mean": mean.astype(np.float32), "std": std.astype(np.float32)}


def logits(params: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    return (features - params["mean"]) / params["std"] @ params["weight"].T + params["bias"]


def probabilities(params: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """The readout's class probabilities (softmax of its logits), (n, n_classes) float64."""
    z = logits(params, features).astype(np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def predict(params: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    return logits(params, features).argmax(1)


def accuracy(params: dict[str, np.ndarray], features: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(params, features) == labels).mean())


def probe_accuracy(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
                   n_classes: int, ridge: float = 1e-2) -> tuple[float, float]:
    """(train, test) accuracy of a closed-form ridge classifier: how linearly readable a unit is."""
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    a = np.c_[(f_train - mean) / std, np.ones(len(f_train))].astype(np.float64)
    b = np.c_[(f_test - mean) / std, np.ones(len(f_test))].astype(np.float64)
    targets = np.eye(n_classes)[y_train]
    w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ targets)
    return float(((a @ w).argmax(1) == y_train).mean()), float(((b @ w).argmax(1) == y_test).mean())
