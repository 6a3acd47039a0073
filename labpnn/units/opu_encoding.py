"""Binary input encoders for an OPU, and their decoders.

An OPU (or an SLM driven in binary amplitude) only takes 0/1 inputs. Real features are
either thresholded (one binary image per sample) or split into bit planes (n_bits binary
images per sample, projected separately and recombined after the optics).

Two families: `FixedRangeBitPlanEncoder`/`Decoder`, the scattering unit's (a fixed [0, 1]
range), and lightonml 1.4's encoders with lightonml's signatures and behaviour (as its
documentation describes them), which `labpnn.lightonml.encoding.base` exports under
lightonml's import path. Those take and return NumPy arrays or torch tensors alike.
"""

from __future__ import annotations

import functools
import inspect

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


def is_tensor(X) -> bool:
    """A torch tensor (torch itself is not imported for the check)."""
    return type(X).__name__ == "Tensor"


def to_numpy(X) -> np.ndarray:
    return X.detach().cpu().numpy() if is_tensor(X) else np.asarray(X)


def _keeps_type(transform):
    """transform() on a NumPy view of X; a tensor in gives a tensor out."""
    @functools.wraps(transform)
    def wrapper(self, X, *args, **kwargs):
        Z = transform(self, to_numpy(X), *args, **kwargs)
        if is_tensor(X):
            import torch
            return torch.from_numpy(np.ascontiguousarray(Z))
        return Z
    return wrapper


class BaseTransformer:
    """fit (a no-op unless the encoder learns from the data) and fit_transform, as scikit-learn."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        raise NotImplementedError

    def fit_transform(self, X, y=None):
        return self.fit(X, y).transform(X)


class NoEncoding(BaseTransformer):
    """The identity (the default encoder of OPU.transform)."""

    def transform(self, X):
        return X


class NoDecoding(NoEncoding):
    """The identity (the default decoder of OPU.transform)."""


class BinaryThresholdEncoder(BaseTransformer):
    """x > threshold_enc -> 1 (greater_is_one; else x < threshold_enc -> 1), uint8.
    threshold_enc "auto": the feature-wise median of the data given to fit()."""

    def __init__(self, threshold_enc="auto", greater_is_one: bool = True):
        if not (isinstance(threshold_enc, (int, float)) or threshold_enc == "auto"):
            raise ValueError(f"BinaryThresholdEncoder: threshold_enc must be a number or 'auto', "
                             f"got {threshold_enc!r}")
        self.threshold_enc = threshold_enc
        self.greater_is_one = greater_is_one

    def fit(self, X, y=None):
        X = to_numpy(X)
        if isinstance(self.threshold_enc, str):
            self.threshold_enc = np.median(X, axis=0)
        return self

    @_keeps_type
    def transform(self, X):
        if isinstance(self.threshold_enc, str):
            raise RuntimeError("BinaryThresholdEncoder: threshold_enc is 'auto': call fit before transform")
        bits = X > self.threshold_enc if self.greater_is_one else X < self.threshold_enc
        return bits.astype(np.uint8)


class MultiThresholdEncoder(BaseTransformer):
    """Each value against n_bins - 1 thresholds (each threshold one more bit on: a thermometer
    code), (n, f) -> (n, f * (n_bins - 1)) uint8, grouped by threshold. thresholds: a list or
    array (2-D with columnwise), or "linspace" / "quantiles" of the data given to fit()."""

    def __init__(self, thresholds="linspace", n_bins: int = 8, columnwise: bool = False):
        if isinstance(thresholds, (list, np.ndarray)):
            thresholds = np.asarray(thresholds)
            if columnwise and thresholds.ndim != 2:
                raise ValueError("MultiThresholdEncoder: columnwise needs 2-D thresholds "
                                 "(n_features, n_bins - 1)")
            self.n_bins = thresholds.shape[-1] + 1
        elif thresholds in ("linspace", "quantiles"):
            self.n_bins = n_bins
        else:
            raise ValueError("MultiThresholdEncoder: thresholds must be a list, an array, "
                             f"'linspace' or 'quantiles', got {thresholds!r}")
        self.thresholds = thresholds
        self.columnwise = columnwise

    def fit(self, X, y=None):
        X = to_numpy(X)
        if not isinstance(self.thresholds, str):
            return self

        def levels(a):
            if self.thresholds == "linspace":
                return np.linspace(a.min(), a.max(), self.n_bins + 1)[1:-1]
            return np.quantile(a, np.arange(1, self.n_bins) / self.n_bins, method="midpoint")

        self.thresholds = (np.stack([levels(X[:, j]) for j in range(X.shape[1])]).astype(np.float32)
                           if self.columnwise else levels(X))
        return self

    @_keeps_type
    def transform(self, X):
        if isinstance(self.thresholds, str):
            raise RuntimeError(f"MultiThresholdEncoder: thresholds are {self.thresholds!r}: call fit first")
        t = self.thresholds
        per_level = t[:, None, None] if t.ndim == 1 else t.T[:, None, :]  # (levels, 1, 1 | f)
        return np.concatenate(list(X[None] > per_level), axis=-1).astype(np.uint8)


class ConcatenatedBitPlanEncoder(BaseTransformer):
    """Unsigned integers -> their bits starting_bit .. starting_bit + n_bits - 1 (most
    significant first within each byte, as np.unpackbits), concatenated along the features:
    (n, f) -> (n, f * n_bits) uint8, [bits of feature 0, ..., bits of feature f-1]."""

    def __init__(self, n_bits: int = 8, starting_bit: int = 0):
        if n_bits <= 0:
            raise ValueError("ConcatenatedBitPlanEncoder: n_bits must be a positive integer")
        if starting_bit < 0:
            raise ValueError("ConcatenatedBitPlanEncoder: starting_bit must be 0 or positive")
        self.n_bits, self.starting_bit = n_bits, starting_bit

    @_keeps_type
    def transform(self, X):
        width = X.dtype.itemsize * 8
        if self.n_bits + self.starting_bit > width:
            raise ValueError(f"ConcatenatedBitPlanEncoder: n_bits + starting_bit is greater than "
                             f"the input's bit width: {self.n_bits}+{self.starting_bit} > {width}")
        n, f = X.shape
        bits = np.unpackbits(np.ascontiguousarray(X)[:, :, None].view(np.uint8), axis=2)
        return bits[:, :, self.starting_bit:self.starting_bit + self.n_bits].reshape(n, f * self.n_bits)


class ConcatenatingBitPlanDecoder(BaseTransformer):
    """Weighs n_bits consecutive output rows by decoding_decay ** k and lays them side by
    side: (n * n_bits, m) -> (n, n_bits * m) float32."""

    def __init__(self, n_bits: int = 8, decoding_decay: float = 0.5):
        self.n_bits, self.decoding_decay = n_bits, decoding_decay

    @_keeps_type
    def transform(self, X):
        rows, m = X.shape
        n = rows // self.n_bits
        if n * self.n_bits != rows:
            raise ValueError(f"ConcatenatingBitPlanDecoder: {rows} rows is not a multiple of "
                             f"n_bits = {self.n_bits}: use the encoder's n_bits")
        decay = (self.decoding_decay ** np.arange(self.n_bits)).reshape(1, self.n_bits, 1)
        return (X.reshape(n, self.n_bits, m) * decay).reshape(n, self.n_bits * m).astype(np.float32)


class Float32Encoder(BaseTransformer):
    """float32 -> the bits kept of each value (the sign, exp_bits of the exponent, mantissa_bits
    of the mantissa, most significant first), one bit plane per row:
    (n, f) -> (n * n_bits, f) uint8."""

    concatenate = False

    def __init__(self, sign_bit: bool = True, exp_bits: int = 8, mantissa_bits: int = 23):
        if not 0 <= exp_bits <= 8:
            raise ValueError("exp_bits must be in the range [0, 8]")
        if not 0 <= mantissa_bits <= 23:
            raise ValueError("mantissa_bits must be in the range [0, 23]")
        self.sign_bit, self.exp_bits, self.mantissa_bits = sign_bit, exp_bits, mantissa_bits
        self.n_bits = int(sign_bit) + exp_bits + mantissa_bits
        self.indices = sorted(([0] if sign_bit else []) + list(range(1, exp_bits + 1))
                              + list(range(9, 9 + mantissa_bits)))

    @_keeps_type
    def transform(self, X):
        n, f = X.shape
        raw = np.ascontiguousarray(X, dtype=np.float32)[:, :, None].view(np.uint8)
        bits = np.unpackbits(raw[:, :, ::-1], axis=2)[:, :, self.indices]  # (n, f, n_bits), MSB first
        if self.concatenate:
            return bits.reshape(n, f * self.n_bits)
        return np.transpose(bits, (0, 2, 1)).reshape(n * self.n_bits, f)


class ConcatenatedFloat32Encoder(Float32Encoder):
    """Float32Encoder with the bits of each value side by side: (n, f) -> (n, f * n_bits)."""

    concatenate = True


class SequentialBaseTwoEncoder(BaseTransformer):
    """Values scaled to 0 .. n_gray_levels - 1 (offset and scale from fit()) in base 2, each bit
    repeated by its weight (a value v gives v ones): (n, f) -> (n, f * (n_gray_levels - 1))."""

    def __init__(self, n_gray_levels: int = 16):
        if not (isinstance(n_gray_levels, int) and n_gray_levels > 0
                and n_gray_levels & (n_gray_levels - 1) == 0) or n_gray_levels > 256:
            raise ValueError(f"SequentialBaseTwoEncoder: n_gray_levels must be a power of 2 up "
                             f"to 256, got {n_gray_levels!r}")
        self.n_gray_levels = n_gray_levels
        self.n_bits = int(np.log2(n_gray_levels))
        self.offset = self.scale = None

    def fit(self, X, y=None):
        X = to_numpy(X)
        self.offset = np.min(X)
        self.scale = np.max(X - self.offset)
        return self

    @_keeps_type
    def transform(self, X):
        if self.offset is None:
            raise RuntimeError("SequentialBaseTwoEncoder: call fit on the training data before transform")
        n, f = X.shape
        top = self.n_gray_levels - 1
        levels = np.clip(np.round(top * (X - self.offset) / (self.scale or 1)), 0, top).astype(np.uint8)
        bits = np.unpackbits(levels[:, :, None], axis=2)[:, :, 8 - self.n_bits:]
        return np.repeat(bits, 2 ** np.arange(self.n_bits)[::-1], axis=2).reshape(n, f * top)


class SeparatedBitPlanEncoder(BaseTransformer):
    """Real values -> `precision` bit planes, quantised against the data's own maximum (and,
    when there are negative values, a second set of planes for -X against its maximum):
    (n, f) -> (n * precision [* 2], f) uint8, planes grouped by sample, most significant first.
    get_params() gives the SeparatedBitPlanDecoder what it needs to undo it."""

    def __init__(self, precision: int = 6, **kwargs):
        if "n_bits" in kwargs or "starting_bit" in kwargs:
            raise RuntimeError("SeparatedBitPlanEncoder: the interface changed from n_bits to precision")
        if kwargs:
            raise TypeError(f"SeparatedBitPlanEncoder: unexpected arguments {sorted(kwargs)}")
        if not 0 < precision <= 8:
            raise ValueError(f"SeparatedBitPlanEncoder: precision must be in 1..8, got {precision}")
        self.precision = precision
        self.magnitude = None, None

    def _integer_magnitude(self, X: np.ndarray) -> float:
        top = X.max()  # integers: a power-of-two range, so that quantising is a shift
        if top < 0:
            return 0
        return (2 ** self.precision - 1) * 0.5 ** (self.precision - np.ceil(np.log2(top + 1)))

    def _planes(self, X: np.ndarray) -> np.ndarray:
        q = (X * (2 ** self.precision - 1) + 0.5).astype(np.uint8)
        bits = np.unpackbits(q[:, None], axis=1)[:, -self.precision:]
        return bits.reshape(-1, *bits.shape[2:])

    @_keeps_type
    def transform(self, X):
        if np.issubdtype(X.dtype, np.signedinteger):
            mag_p, mag_n = self._integer_magnitude(+X), self._integer_magnitude(-X)
        elif np.issubdtype(X.dtype, np.integer):
            mag_p, mag_n = self._integer_magnitude(X), 0
        else:
            mag_p, mag_n = max(float(X.max()), 0.0), max(float(-X.min()), 0.0)
        X = X.astype(np.float64)
        full_scale = (1 - 0.5 ** self.precision) * 2  # the decoder's weights summed
        self.magnitude = mag_p / full_scale, mag_n / full_scale
        pos = self._planes(np.clip(X / (mag_p or 1), 0, 1))
        neg = self._planes(np.clip(-X / (mag_n or 1), 0, 1))
        if mag_n <= 0:
            return pos
        if mag_p <= 0:
            return neg
        return np.concatenate((pos, neg), 0)

    def get_params(self) -> dict:
        return {"precision": self.precision, "magnitude_p": self.magnitude[0],
                "magnitude_n": self.magnitude[1]}


class SeparatedBitPlanDecoder(BaseTransformer):
    """Undoes SeparatedBitPlanEncoder after the optics: plane k weighs decoding_decay ** k,
    times the encoder's magnitudes (its get_params())."""

    def __init__(self, precision: int, magnitude_p: float = 1, magnitude_n: float = 0,
                 decoding_decay: float = 0.5):
        self.precision, self.decoding_decay = precision, decoding_decay
        self.magnitude_p, self.magnitude_n = magnitude_p, magnitude_n

    @_keeps_type
    def transform(self, X):
        rows, m = X.shape
        sides = 2 if (self.magnitude_n > 0 and self.magnitude_p > 0) else 1
        n = rows // (self.precision * sides)
        if n * self.precision * sides != rows:
            raise ValueError(f"SeparatedBitPlanDecoder: {rows} rows is not a multiple of "
                             f"precision x sides = {self.precision * sides}")
        planes = X.reshape(sides, n, self.precision, m).astype(np.float32)
        decay = (self.decoding_decay ** np.arange(self.precision)).astype(np.float32)
        values = np.einsum("snpm,p->snm", planes, decay)
        if self.magnitude_n <= 0:
            return values[0] * np.float32(self.magnitude_p)
        if self.magnitude_p <= 0:
            return -values[0] * np.float32(self.magnitude_n)
        return values[0] * np.float32(self.magnitude_p) - values[1] * np.float32(self.magnitude_n)


def instance(encoder) -> BaseTransformer:
    """An encoder or decoder given as its class (constructed with its defaults) or an instance."""
    return encoder() if inspect.isclass(encoder) else encoder


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


class FixedRangeBitPlanEncoder:
    """Quantise each feature in [0, 1] to n_bits and emit each bit plane as its own binary row.

    (n, f) -> (n * n_bits, f) uint8, rows grouped by sample and ordered from the most
    significant plane to the least. The range is fixed, so every batch is quantised alike (what
    a unit trained on its outputs needs); lightonml's SeparatedBitPlanEncoder scales each call
    by the data's own maximum instead.
    """

    def __init__(self, n_bits: int = 4):
        if not 1 <= int(n_bits) <= 16:
            raise ValueError(f"FixedRangeBitPlanEncoder: n_bits must be in 1..16, got {n_bits}")
        self.n_bits = int(n_bits)

    def transform(self, X) -> np.ndarray:
        X = _as_2d_float(X, "FixedRangeBitPlanEncoder")
        if X.size and (X.min() < 0 or X.max() > 1):
            raise ValueError("FixedRangeBitPlanEncoder: features must lie in [0, 1] "
                             f"(got {X.min():.4g}..{X.max():.4g}); scale and clip them first")
        levels = np.rint(X * (2**self.n_bits - 1)).astype(np.uint16)
        shifts = np.arange(self.n_bits - 1, -1, -1, dtype=np.uint16)[None, :, None]
        planes = (levels[:, None, :] >> shifts) & 1  # (n, n_bits, f), most significant first
        return planes.astype(np.uint8).reshape(-1, X.shape[1])


class FixedRangeBitPlanDecoder:
    """Recombine per-plane projections: sum_k y_k * 2^k / (2^n_bits - 1), k = bit weight.

    (n * n_bits, m) -> (n, m) float32. Exact for a linear projection of the planes; for the
    OPU's |R x|^2 it is the same weighted sum of the per-plane intensities lightonml uses.
    """

    def __init__(self, n_bits: int = 4):
        if not 1 <= int(n_bits) <= 16:
            raise ValueError(f"FixedRangeBitPlanDecoder: n_bits must be in 1..16, got {n_bits}")
        self.n_bits = int(n_bits)

    def transform(self, Y) -> np.ndarray:
        Y = np.asarray(Y)
        if Y.ndim != 2 or Y.shape[0] % self.n_bits:
            raise ValueError(f"FixedRangeBitPlanDecoder: expected (n * {self.n_bits}, m) rows, "
                             f"got shape {Y.shape}")
        weights = (2.0 ** np.arange(self.n_bits - 1, -1, -1) / (2**self.n_bits - 1)).astype(np.float32)
        planes = Y.reshape(-1, self.n_bits, Y.shape[1]).astype(np.float32, copy=False)
        return np.einsum("npm,p->nm", planes, weights, dtype=np.float32)
