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
