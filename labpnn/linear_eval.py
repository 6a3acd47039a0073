"""The linear evaluation protocol of unsupervised units: freeze them, fit a logistic regression
(scikit-learn) on their measured features of the training set, report its test accuracy."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

PROBE_C = 1.0          # inverse L2 strength of the logistic regression on standardised features
PROBE_MAX_ITER = 2000  # lbfgs iterations


def linear_probe(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy (fraction) of a multinomial logistic regression fitted on standardised
    training features; deterministic (lbfgs)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER))
    model.fit(np.asarray(f_train, np.float64), y_train)
    return float(model.score(np.asarray(f_test, np.float64), y_test))


# The paper's three semantic groups of Fashion-MNIST ("upper-body clothes, lower-body clothes,
# footwear"); dress (3) and bag (8) belong to none and are left out of the group probe.
FASHION_GROUPS: dict[str, tuple[int, ...]] = {
    "upper-body clothes": (0, 2, 4, 6),  # T-shirt/top, pullover, coat, shirt
    "lower-body clothes": (1,),          # trouser
    "footwear": (5, 7, 9),               # sandal, sneaker, ankle boot
}


def group_probe(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
                groups: dict[str, tuple[int, ...]] = FASHION_GROUPS) -> float:
    """linear_probe of the group of each sample (its class's group in `groups`) instead of its
    class; samples of classes in no group are left out of both splits."""
    index = {c: k for k, classes in enumerate(groups.values()) for c in classes}
    g_train, g_test = (np.array([index.get(int(c), -1) for c in y]) for y in (y_train, y_test))
    keep_train, keep_test = g_train >= 0, g_test >= 0
    return linear_probe(np.asarray(f_train)[keep_train], g_train[keep_train],
                        np.asarray(f_test)[keep_test], g_test[keep_test])
