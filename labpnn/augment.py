"""Augmentations: the seeded random transforms that make the two views of unsupervised PIB.

A recipe lists them under `augment:` with their strengths, e.g.
`augment: [{name: shift, pixels: 2}, {name: rotate, degrees: 10}, {name: pixel_noise, std: 0.05}]`;
they are applied in that order to the flattened network inputs. Each registered augmentation
names the data it applies to: "image" (square images, values in [0, 1]: digits, MNIST,
Fashion-MNIST) or "signal" (1-D signals: MNIST-1D). A user adds one with
`register_augmentation(name, kind, Options, apply)`; docs/unsupervised.md lists them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import gaussian_filter, gaussian_filter1d, grey_dilation, grey_erosion

from labpnn.config_errors import validate
from labpnn.errors import ConfigError

__all__ = ["AUGMENTATIONS", "VIEW_TARGETS", "Augmentation", "Pipeline", "data_kind", "parse_pipeline", "register_augmentation"]

VIEW_TARGETS = frozenset({"x2", "h2"})  # what an objective that compares two views reads of a batch
Kind = Literal["image", "signal"]
KINDS: dict[str, Kind] = {"digits": "image", "mnist": "image", "fashion-mnist": "image", "mnist1d": "signal"}


class Strengths(BaseModel):
    """Base of an augmentation's options: its strengths, each with its allowed range."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Augmentation:
    """apply(x (n, d) float32, options, rng) -> the transformed copy, same shape."""

    name: str
    kind: Kind
    options: type[Strengths]
    apply: Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]


AUGMENTATIONS: dict[str, Augmentation] = {}


def register_augmentation(name: str, kind: Kind, options: type[Strengths],
                          apply: Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]) -> None:
    """Make `name` available to recipes' `augment:` lists (for data of `kind`)."""
    if kind not in ("image", "signal"):
        raise ValueError(f"kind: must be 'image' or 'signal', got {kind!r}")
    AUGMENTATIONS[name] = Augmentation(name, kind, options, apply)


def data_kind(dataset: str) -> Kind:
    """"image" or "signal": what the augmentations of `dataset` must apply to."""
    return KINDS[dataset]


@dataclass(frozen=True)
class Pipeline:
    """Augmentations applied in order; view `v` of inputs x under `seed` is reproducible."""

    steps: tuple[tuple[Augmentation, Strengths], ...]

    def __call__(self, x: np.ndarray, seed: int, view: int) -> np.ndarray:
        rng = np.random.default_rng([seed, view])
        out = np.array(x, dtype=np.float32)
        for aug, options in self.steps:
            out = aug.apply(out, options, rng).astype(np.float32, copy=False)
        return out

    def describe(self) -> str:
        return ", ".join(f"{a.name}({', '.join(f'{k}={v}' for k, v in o.model_dump().items())})"
                         for a, o in self.steps)


def parse_pipeline(entries: Sequence[Any], dataset: str, where: str = "augment") -> Pipeline:
    """The recipe's `augment:` list as a Pipeline for `dataset`; a ConfigError names the entry
    (`augment.1.degrees: ...`) for an unknown augmentation, a strength out of range or an
    augmentation meant for other data."""
    kind = data_kind(dataset)
    steps = []
    for i, entry in enumerate(entries):
        at = f"{where}.{i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{at}: expected a mapping with a 'name' (one of {', '.join(AUGMENTATIONS)}), "
                              f"got {entry!r}")
        name = entry["name"]
        aug = AUGMENTATIONS.get(name)
        if aug is None:
            raise ConfigError(f"{at}.name: unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
        if aug.kind != kind:
            fits = [a.name for a in AUGMENTATIONS.values() if a.kind == kind]
            raise ConfigError(f"{at}.name: {name!r} applies to {aug.kind}s, but dataset {dataset!r} holds "
                              f"{kind}s; for {kind}s use: {', '.join(fits)}")
        options = validate(aug.options, {k: v for k, v in entry.items() if k != "name"}, f"augmentation {name!r}", at)
        steps.append((aug, options))
    return Pipeline(tuple(steps))


# -- images -------------------------------------------------------------------------------

def _side(x: np.ndarray) -> int:
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        raise ValueError(f"x: {x.shape[1]} features are not a square image")
    return side


def _affine(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Warp each flattened square image of x by its 2x3 affine map theta (n, 2, 3) of
    normalised coordinates (output -> input), bilinear, zero outside."""
    side = _side(x)
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(len(x), 1, side, side)
    grid = torch.nn.functional.affine_grid(torch.from_numpy(theta.astype(np.float32)), list(images.shape),
                                           align_corners=False)
    out = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(len(x), -1).numpy()


def _theta(scale: np.ndarray, angle: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """Per-image affine maps (n, 2, 3): rotate by angle, scale, then translate."""
    theta = np.zeros((len(scale), 2, 3))
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = c, -s, tx
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = s, c, ty
    return theta


class ShiftOptions(Strengths):
    pixels: int = Field(2, ge=0, le=8, description="largest shift along each axis, pixels")


def _shift(x, o: ShiftOptions, rng):
    """Translate by a whole number of pixels, uniform in [-pixels, pixels] per axis, zero-filled."""
    n, side = len(x), _side(x)
    dx, dy = (rng.integers(-o.pixels, o.pixels + 1, n) * 2.0 / side for _ in range(2))
    return _affine(x, _theta(np.ones(n), np.zeros(n), dx, dy))


class CropOptions(Strengths):
    min_scale: float = Field(0.8, ge=0.3, le=1.0, description="smallest crop side, as a fraction of the image side")


def _crop(x, o: CropOptions, rng):
    """A random square crop of side uniform in [min_scale, 1] x the image side, anywhere in the
    image, resized back to the full image."""
    n = len(x)
    s = rng.uniform(o.min_scale, 1.0, n)
    tx, ty = ((1 - s) * rng.uniform(-1, 1, n) for _ in range(2))
    return _affine(x, _theta(s, np.zeros(n), tx, ty))


class RotateOptions(Strengths):
    degrees: float = Field(10.0, ge=0, le=45, description="largest rotation either way, degrees")


def _rotate(x, o: RotateOptions, rng):
    """Rotate about the centre by an angle uniform in [-degrees, degrees]."""
    n = len(x)
    angle = np.deg2rad(rng.uniform(-o.degrees, o.degrees, n))
    return _affine(x, _theta(np.ones(n), angle, np.zeros(n), np.zeros(n)))


class PixelNoiseOptions(Strengths):
    std: float = Field(0.05, ge=0, le=0.5, description="Gaussian noise per pixel, in units of full scale")


def _pixel_noise(x, o: PixelNoiseOptions, rng):
    """Add independent Gaussian noise to every pixel, then clip to [0, 1]."""
    return np.clip(x + rng.normal(0.0, o.std, x.shape), 0.0, 1.0)


class StrokeOptions(Strengths):
    amount: float = Field(0.5, ge=0, le=1, description="largest blend towards the dilated or eroded image")


def _stroke(x, o: StrokeOptions, rng):
    """Thicken or thin the strokes: blend each image with its grey dilation (a 3 x 3 cross) by a
    factor uniform in [0, amount], or with its erosion by one in [-amount, 0)."""
    side = _side(x)
    images = x.reshape(len(x), side, side)
    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    t = rng.uniform(-o.amount, o.amount, (len(x), 1, 1))
    toward = np.where(t > 0, grey_dilation(images, footprint=cross), grey_erosion(images, footprint=cross))
    return (images + np.abs(t) * (toward - images)).reshape(len(x), -1)


class ElasticOptions(Strengths):
    alpha: float = Field(34.0, ge=0, le=60, description="scale of the displacement field, pixels")
    sigma: float = Field(4.0, ge=1, le=10, description="smoothness of the displacement field, pixels")


def _elastic(x, o: ElasticOptions, rng):
    """Simard et al.'s elastic distortion: every pixel displaced by a random field (uniform in
    [-1, 1] per pixel and axis, Gaussian-smoothed with sigma, times alpha), bilinear, zero outside."""
    n, side = len(x), _side(x)
    field = [gaussian_filter(rng.uniform(-1, 1, (n, side, side)), (0, o.sigma, o.sigma)) * o.alpha * 2.0 / side
             for _ in range(2)]  # in normalised coordinates (the image spans [-1, 1])
    base = np.linspace(-1 + 1.0 / side, 1 - 1.0 / side, side)
    gx, gy = np.meshgrid(base, base)  # x along columns, y along rows
    grid = np.stack([gx + field[0], gy + field[1]], axis=-1).astype(np.float32)
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(n, 1, side, side)
    out = torch.nn.functional.grid_sample(images, torch.from_numpy(grid), mode="bilinear", padding_mode="zeros",
                                          align_corners=False)
    return out.reshape(n, -1).numpy()


# -- 1-D signals (MNIST-1D: its generator's translate, scale and noise, seeded) ------------

class SignalShiftOptions(Strengths):
    samples: int = Field(3, ge=0, le=20, description="largest circular shift either way, samples")


def _signal_shift(x, o: SignalShiftOptions, rng):
    """Circular shift by a whole number of samples, uniform in [-samples, samples] (as MNIST-1D's
    generator translates)."""
    k = rng.integers(-o.samples, o.samples + 1, len(x))
    idx = (np.arange(x.shape[1])[None, :] - k[:, None]) % x.shape[1]
    return np.take_along_axis(x, idx, 1)


class SignalScaleOptions(Strengths):
    amount: float = Field(0.2, ge=0, le=0.9, description="amplitude factor uniform in [1 - amount, 1 + amount]")


def _signal_scale(x, o: SignalScaleOptions, rng):
    """Multiply each signal by one random factor (MNIST-1D's scale)."""
    return x * rng.uniform(1 - o.amount, 1 + o.amount, (len(x), 1))


class SignalNoiseOptions(Strengths):
    iid: float = Field(0.1, ge=0, le=2, description="independent Gaussian noise per sample, signal units")
    correlated: float = Field(0.1, ge=0, le=2, description="Gaussian noise smoothed over 2 samples, signal units")


def _signal_noise(x, o: SignalNoiseOptions, rng):
    """Add correlated (Gaussian-filtered, width 2 samples) and independent noise (MNIST-1D's)."""
    corr = gaussian_filter1d(rng.normal(0.0, o.correlated, x.shape), 2, axis=1)
    return x + corr + rng.normal(0.0, o.iid, x.shape)


for _name, _kind, _options, _apply in (
        ("shift", "image", ShiftOptions, _shift), ("crop", "image", CropOptions, _crop),
        ("rotate", "image", RotateOptions, _rotate), ("pixel_noise", "image", PixelNoiseOptions, _pixel_noise),
        ("stroke", "image", StrokeOptions, _stroke), ("elastic", "image", ElasticOptions, _elastic),
        ("signal_shift", "signal", SignalShiftOptions, _signal_shift),
        ("signal_scale", "signal", SignalScaleOptions, _signal_scale),
        ("signal_noise", "signal", SignalNoiseOptions, _signal_noise)):
    register_augmentation(_name, _kind, _options, _apply)
