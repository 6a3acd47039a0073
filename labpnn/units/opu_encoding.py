"""Binary input encoders for an OPU, and their decoders, in the style of lightonml.encoding.

An OPU (or an SLM driven in binary amplitude) only takes 0/1 inputs. Real features are
either thresholded (one binary image per sample) or split into bit planes (n_bits binary
images per sample, projected separately and recombined after the optics).
"""

from __future__ import annotations

import numpy as np


def _as_2d_float(X, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (n_samples, n_features), got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"{what}: expected numbers, got dtype {X.dtype}")
    if not np.isfinite(X).all():
        raise ValueError(f"{what}: the input holds NaN or infinite values")
    return X


class BinaryThresholdEncoder:
    """x > threshold -> 1, else 0 (uint8), like lightonml's BinaryThresholdEncoder."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)

    def transform(self, X) -> np.ndarray:
        X = _as_2d_float(X, "BinaryThresholdEncoder")
        return (X > self.threshold).astype(np.uint8)


class ThermometerEncoder:
    """Each feature in [0, 1] lights the first round(x * levels) of its `levels` bits:
    (n, f) -> (n, f * levels) uint8, feature by feature. Unlike bit planes, nearby values
    share most bits, so a random projection of the code varies smoothly with the input."""

    def __init__(self, levels: int = 4):
        if not 1 <= int(levels) <= 256:
            raise ValueError(f"ThermometerEncoder: levels must be in 1..256, got {levels}")
        self.levels = int(levels)
        self.thresholds = ((np.arange(self.levels) + 0.5) / self.levels).astype(np.float32)

    def transform(self, X) -> np.ndarray:
        X = _as_2d_float(X, "ThermometerEncoder")
        return (X[:, :, None] > self.thresholds).reshape(len(X), -1).astype(np.uint8)


class SeparatedBitPlanEncoder:
    """Quantise each feature in [0, 1] to n_bits and emit each bit plane as its own binary row.

    (n, f) -> (n * n_bits, f) uint8, rows grouped by sample and ordered from the most
    significant plane to the least, as lightonml's SeparatedBitPlanEncoder lays them out.
    """

    def __init__(self, n_bits: int = 4):
        if not 1 <= int(n_bits) <= 16:
            raise ValueError(f"SeparatedBitPlanEncoder: n_bits must be in 1..16, got {n_bits}")
        self.n_bits = int(n_bits)

    def transform(self, X) -> np.ndarray:
        X = _as_2d_float(X, "SeparatedBitPlanEncoder")
        if X.size and (X.min() < 0 or X.max() > 1):
            raise ValueError("SeparatedBitPlanEncoder: features must lie in [0, 1] "
                             f"(got {X.min():.4g}..{X.max():.4g}); scale and clip them first")
        levels = np.rint(X * (2**self.n_bits - 1)).astype(np.uint16)
        shifts = np.arange(self.n_bits - 1, -1, -1, dtype=np.uint16)[None, :, None]
        planes = (levels[:, None, :] >> shifts) & 1  # (n, n_bits, f), most significant first
        return planes.astype(np.uint8).reshape(-1, X.shape[1])


class SeparatedBitPlanDecoder:
    """Recombine per-plane projections: sum_k y_k * 2^k / (2^n_bits - 1), k = bit weight.

    (n * n_bits, m) -> (n, m) float32. Exact for a linear projection of the planes; for the
    OPU's |R x|^2 it is the same weighted sum of the per-plane intensities lightonml uses.
    """

    def __init__(self, n_bits: int = 4):
        if not 1 <= int(n_bits) <= 16:
            raise ValueError(f"SeparatedBitPlanDecoder: n_bits must be in 1..16, got {n_bits}")
        self.n_bits = int(n_bits)

    def transform(self, Y) -> np.ndarray:
        Y = np.asarray(Y)
        if Y.ndim != 2 or Y.shape[0] % self.n_bits:
            raise ValueError(f"SeparatedBitPlanDecoder: expected (n * {self.n_bits}, m) rows, "
                             f"got shape {Y.shape}")
        weights = (2.0 ** np.arange(self.n_bits - 1, -1, -1) / (2**self.n_bits - 1)).astype(np.float32)
        planes = Y.reshape(-1, self.n_bits, Y.shape[1]).astype(np.float32, copy=False)
        return np.einsum("npm,p->nm", planes, weights, dtype=np.float32)
