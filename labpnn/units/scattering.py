"""The scattering unit: a fixed optical random projection followed by a trainable digital layer.

Also here: the small protocols an SLM and a camera share (drivers and twins alike), and
`SLMCameraProjector`, the Projector built from an SLM and a camera looking at the speckle
behind a scattering medium (the OPU is the other Projector: labpnn.instruments.opu.OPUFront).
"""

from __future__ import annotations

import math
import threading
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from labpnn.units.opu_encoding import (
    BinaryThresholdEncoder,
    FixedRangeBitPlanDecoder,
    FixedRangeBitPlanEncoder,
    ThermometerEncoder,
)
from labpnn.errors import DeviceError
from labpnn.instruments.base import Connectable
from labpnn.protocols import Device, Health, Projector
from labpnn.units.base import Activation, apply_activation

_SEQUENCE_FRAMES = 256  # frames per SLM sequence when both instruments offer sequence mode
_FIT_ROWS = 1000  # encoded rows a fittable projector (OPU) is fitted on


@runtime_checkable
class SpatialLightModulator(Device, Protocol):
    """An SLM: ScreenSLM or SimSLM."""

    shape: tuple[int, int]  # (height, width) pixels
    bit_depth: int
    settle_s: float

    def show(self, frame: np.ndarray) -> None:
        """Show a (height, width) frame of grey levels; return once settled."""
        ...

    def phase_to_grey(self, phase) -> np.ndarray: ...


@runtime_checkable
class Camera(Device, Protocol):
    """A camera: GenICamCamera or SimCamera."""

    shape: tuple[int, int]  # (height, width) pixels
    bit_depth: int
    exposure_us: float
    gain_db: float

    def grab(self) -> np.ndarray:
        """One frame, (height, width) uint8 or uint16."""
        ...

    def set_exposure_us(self, us: float) -> None: ...

    def set_gain_db(self, db: float) -> None: ...


@runtime_checkable
class FittableProjector(Projector, Protocol):
    """A Projector fitted to its inputs before use (the OPU: input size and exposure)."""

    max_n_features: int
    fit_id: int  # changes at every fit: users sharing the projector can tell theirs is gone

    def fit1d(self, X=None, n_features: int | None = None) -> None: ...


def inputs_taken(projector: Projector) -> int:
    """The most binary inputs the projector takes (a fittable one: up to its max_n_features)."""
    return projector.max_n_features if isinstance(projector, FittableProjector) else projector.n_inputs


def _binary_rows(x, n_inputs: int, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != n_inputs:
        raise ValueError(f"{where}: input of shape {x.shape}, expected (n, {n_inputs})")
    if not (x.dtype == bool or np.issubdtype(x.dtype, np.integer)) or (
            x.size and (x.min() < 0 or x.max() > 1)):
        raise ValueError(f"{where}: input must be binary 0/1 integers (uint8)")
    return x.astype(np.uint8, copy=False)


class SLMCameraProjector(Connectable):
    """Projector over an SLM and a camera: input i drives one macro-pixel of the SLM (binary
    phase 0/pi, or amplitude off/on), the camera frame is read on n_outputs fixed pixels
    (a seeded random subset, or all of them)."""

    def __init__(self, slm: SpatialLightModulator, camera: Camera, n_inputs: int, n_outputs: int,
                 macro_pixel: int | None = None, encoding: Literal["phase", "amplitude"] = "phase",
                 seed: int = 0, name: str = "slm+camera"):
        if not isinstance(slm, SpatialLightModulator) or not isinstance(camera, Camera):
            raise TypeError(f"{name}: needs an SLM (show, shape, bit_depth, settle_s) and a camera "
                            f"(grab, shape, bit_depth, exposure/gain), got {type(slm).__name__}, "
                            f"{type(camera).__name__}")
        if encoding not in ("phase", "amplitude"):
            raise ValueError(f"{name}: encoding must be 'phase' or 'amplitude', got {encoding!r}")
        self.name, self.slm, self.camera = name, slm, camera
        self.n_inputs, self.n_outputs, self.encoding, self.seed = int(n_inputs), int(n_outputs), encoding, seed
        self.grid = (math.ceil(self.n_inputs / math.ceil(math.sqrt(self.n_inputs))),
                     math.ceil(math.sqrt(self.n_inputs)))  # (rows, cols) of macro-pixels
        h, w = slm.shape
        largest = min(h // self.grid[0], w // self.grid[1])
        self.macro_pixel = int(macro_pixel or largest)
        if not 1 <= self.macro_pixel <= largest:
            raise ValueError(f"{name}: {self.n_inputs} inputs on a {self.grid[0]}x{self.grid[1]} grid "
                             f"of macro-pixels {self.macro_pixel} px wide do not fit the {w}x{h} SLM "
                             f"(largest macro-pixel: {largest})")
        self.offset = ((h - self.grid[0] * self.macro_pixel) // 2, (w - self.grid[1] * self.macro_pixel) // 2)
        self.pixels: np.ndarray | None = None  # flat indices of the camera pixels read
        if math.prod(camera.shape):  # known before connecting: a twin, or a camera with an ROI
            self._select_pixels()
        if encoding == "phase":
            self.levels = slm.phase_to_grey(np.array([0.0, np.pi]))
        else:
            self.levels = np.array([0, 2**slm.bit_depth - 1], np.uint8 if slm.bit_depth == 8 else np.uint16)
        self.last_frame: np.ndarray | None = None
        self._lock = threading.RLock()

    def _select_pixels(self) -> np.ndarray:
        n_pixels = math.prod(self.camera.shape)
        if not 1 <= self.n_outputs <= n_pixels:
            raise ValueError(f"{self.name}: n_outputs {self.n_outputs} must be in 1..{n_pixels} "
                             "(camera pixels)")
        self.pixels = (np.arange(n_pixels) if self.n_outputs == n_pixels else np.sort(
            np.random.default_rng(self.seed).choice(n_pixels, self.n_outputs, replace=False)))
        return self.pixels

    # -- Projector ---------------------------------------------------------------------------
    def frames(self, x: np.ndarray) -> np.ndarray:
        """SLM frames (n, height, width) for binary inputs x (n, n_inputs)."""
        x = _binary_rows(x, self.n_inputs, self.name)
        (rows, cols), m, (top, left) = self.grid, self.macro_pixel, self.offset
        cells = np.zeros((len(x), rows * cols), np.uint8)
        cells[:, : self.n_inputs] = x
        blocks = np.repeat(np.repeat(self.levels[cells].reshape(-1, rows, cols), m, axis=1), m, axis=2)
        frames = np.full((len(x), *self.slm.shape), self.levels[0], self.levels.dtype)
        frames[:, top:top + rows * m, left:left + cols * m] = blocks
        return frames

    def project(self, x) -> np.ndarray:
        """Binary x (n, n_inputs) -> camera intensities (n, n_outputs) in DN, float32."""
        frames = self.frames(x)
        with self._lock:
            pixels = self.pixels if self.pixels is not None else self._select_pixels()
            out = np.empty((len(frames), self.n_outputs), np.float32)
            if hasattr(self.slm, "show_sequence") and hasattr(self.camera, "grab_sequence"):
                for start in range(0, len(frames), _SEQUENCE_FRAMES):
                    sequence = frames[start:start + _SEQUENCE_FRAMES]
                    self.slm.show_sequence(sequence)
                    shots = self._checked(self.camera.grab_sequence(), len(sequence))
                    out[start:start + len(shots)] = shots.reshape(len(shots), -1)[:, pixels]
                    self.last_frame = shots[-1]
            else:
                for i, frame in enumerate(frames):
                    self.slm.show(frame)
                    shot = self._checked(self.camera.grab()[None], 1)[0]
                    out[i] = shot.ravel()[pixels]
                    self.last_frame = shot
            return out

    def _checked(self, shots: np.ndarray, n: int) -> np.ndarray:
        if shots.shape != (n, *self.camera.shape):
            raise DeviceError(f"camera returned frames of shape {shots.shape}, expected "
                              f"{(n, *self.camera.shape)}", self.name)
        return shots

    # -- Device: both instruments --------------------------------------------------------------
    @property
    def simulated(self) -> bool:
        return bool(self.slm.simulated or self.camera.simulated)

    @property
    def connected(self) -> bool:
        return self.slm.connected and self.camera.connected

    def connect(self) -> None:
        self.slm.connect()
        self.camera.connect()

    def close(self) -> None:
        try:
            self.slm.close()
        finally:
            self.camera.close()


    def identity(self) -> str:
        return f"SLMCameraProjector({self.slm.identity()} -> {self.camera.identity()})"

    def reset(self) -> None:
        self.slm.reset()
        self.camera.reset()

    def safe_state(self) -> None:
        for instrument in (self.slm, self.camera):
            try:
                instrument.safe_state()
            except Exception:  # noqa: BLE001 - safe_state must reach both instruments
                pass

    def self_test(self) -> Health:
        """Both instruments' self-tests, then the light path: two random inputs must give
        different speckle, neither dark nor saturated."""
        with self._lock:
            for instrument in (self.slm, self.camera):
                health = instrument.self_test()
                if not health.ok:
                    return Health(False, health.code or 1, f"{instrument.name}: {health.detail}")
            probes = (np.random.default_rng(self.seed).random((2, self.n_inputs)) < 0.5).astype(np.uint8)
            try:
                y = self.project(probes)
            except (DeviceError, ValueError) as exc:
                return Health(False, 2, str(exc))
            top = 2**self.camera.bit_depth - 1
            corr = float(np.corrcoef(y)[0, 1]) if y.std(axis=1).min() > 0 else 1.0
            if y.max() == 0 or np.mean(y >= top) > 0.5:
                return Health(False, 3, f"camera {'dark' if y.max() == 0 else 'saturated'} behind the SLM")
            if not corr < 0.9:
                return Health(False, 4, f"speckle does not follow the SLM (correlation {corr:.2f})")
            return Health(True, 0, f"speckle follows the SLM (probe correlation {corr:.2f})")

    def snapshot(self) -> dict[str, Any]:
        return {"identity": self.identity(), "simulated": self.simulated,
                "settings": {"n_inputs": self.n_inputs, "n_outputs": self.n_outputs,
                             "macro_pixel": self.macro_pixel, "grid": list(self.grid),
                             "offset": list(self.offset), "encoding": self.encoding, "seed": self.seed},
                "slm": self.slm.snapshot(), "camera": self.camera.snapshot()}


ENCODINGS = ("threshold", "bitplane", "thermometer")


def binary_width(in_features: int, encoding: str, bits: int) -> int:
    """The projector inputs a unit's code lights: a thermometer code takes `bits` per feature."""
    return in_features * bits if encoding == "thermometer" else in_features


class ScatteringUnit:
    """Fixed optical projection, then Linear(n_outputs, out_features) and an activation.

    prepare(h) = normalise(decode(projector.project(encode(h)))): the threshold encoding
    sends h > threshold; the bitplane encoding scales h by its maximum (fixed at the first
    call), clips to [0, 1] and projects `bits` planes separately (lightonml's separated bit
    planes: `bits` times the rows, in_features wide); the thermometer encoding scales alike
    and lights `bits` levels per feature (one row, in_features * bits wide). An OPU is fitted to the unit's first
    batch (input size and exposure), and refitted when another unit sharing it fitted it since;
    an SLM projector with more inputs than in_features gets the extra ones off. The features are then
    standardised with a mean and a scale frozen at the first call, so measure() uses the
    same. No weights are programmed: deploy() freezes the digital layer's weights, which
    measure() then applies to a fresh optical measurement, and refits an OPU to the unit (a
    reconfiguration; the twin's `reconfigure_us` is its duration)."""

    def __init__(self, name: str, projector: Projector, in_features: int, out_features: int,
                 activation: str = "relu", encoding: Literal["threshold", "bitplane", "thermometer"] = "threshold",
                 bits: int = 1, threshold: float = 0.5, seed: int = 0):
        if not isinstance(projector, Projector):
            raise TypeError(f"unit {name!r}: {type(projector).__name__} is not a Projector")
        if encoding not in ENCODINGS:
            raise ValueError(f"unit {name!r}: encoding must be one of {ENCODINGS}, got {encoding!r}")
        if encoding == "threshold" and bits != 1:
            raise ValueError(f"unit {name!r}: bits={bits} needs encoding 'bitplane' or 'thermometer'")
        if (capacity := inputs_taken(projector)) < binary_width(in_features, encoding, bits):
            levels = f" x {bits} thermometer levels" if encoding == "thermometer" else ""
            raise ValueError(f"unit {name!r}: the projector takes {capacity} inputs, fewer than the "
                             f"unit's in_features {in_features}{levels}")
        self.name, self.projector = name, projector
        self._fittable = isinstance(projector, FittableProjector)  # once: a Protocol check costs ~0.5 ms
        self.in_features, self.out_features, self.n_outputs = in_features, out_features, projector.n_outputs
        self.activation, self.encoding, self.bits, self.threshold = activation, encoding, bits, threshold
        self.input_scale: float | None = None  # bitplane: the input maximum seen first
        self.feature_offset: float | None = None
        self.feature_scale: float | None = None
        if encoding == "threshold":
            self._encoder = BinaryThresholdEncoder(threshold)
        elif encoding == "thermometer":
            self._encoder = ThermometerEncoder(bits)
        else:
            self._encoder = FixedRangeBitPlanEncoder(bits)
            self._decoder = FixedRangeBitPlanDecoder(bits)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._model = nn.Sequential(nn.Linear(self.n_outputs, out_features), Activation(activation))
        self._deployed: dict[str, np.ndarray] | None = None
        self._fit_sample: np.ndarray | None = None  # a fittable projector is fitted on these rows
        self._fit_id: int | None = None

    @property
    def last_frame(self) -> np.ndarray | None:
        """The projector's last camera frame / OPU output image (for the GUI)."""
        return self.projector.last_frame

    def instruments(self) -> list[Device]:
        """The bench's instruments behind the projection: the OPU, or the SLM and the camera."""
        if isinstance(self.projector, SLMCameraProjector):
            return [self.projector.slm, self.projector.camera]
        return [self.projector]

    # -- the optical stage ---------------------------------------------------------------------
    def prepare(self, h: np.ndarray) -> np.ndarray:
        """(n, in_features) -> standardised optical features (n, n_outputs), float32."""
        h = np.asarray(h)
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"unit {self.name!r}: input of shape {h.shape}, expected (n, {self.in_features})")
        if not np.isfinite(h).all():
            raise ValueError(f"unit {self.name!r}: input holds NaN or infinite values")
        if len(h) == 0:
            return np.empty((0, self.n_outputs), np.float32)
        y = self._project(h.astype(np.float32, copy=False))
        if self.feature_scale is None:
            self.feature_offset = float(y.mean())
            self.feature_scale = float(y.std()) or 1.0
        y -= np.float32(self.feature_offset)
        y *= np.float32(1 / self.feature_scale)
        return y

    def _project(self, h: np.ndarray) -> np.ndarray:
        if self.encoding == "threshold":
            y = self._project_bits(self._encoder.transform(h))
        else:
            if self.input_scale is None:
                self.input_scale = float(h.max()) if h.max() > 0 else 1.0
            code = self._encoder.transform(np.clip(h / np.float32(self.input_scale), 0, 1))
            y = self._project_bits(code) if self.encoding == "thermometer" else self._decoder.transform(
                self._project_bits(code))
        if y.shape != (len(h), self.n_outputs):
            raise DeviceError(f"projector answered shape {y.shape}, expected {(len(h), self.n_outputs)}",
                              self.name)
        return np.array(y, dtype=np.float32)

    def _project_bits(self, bits: np.ndarray) -> np.ndarray:
        """Project binary rows. A fittable projector (an OPU, perhaps shared with other units)
        is fitted to this unit's first batch, again whenever someone else fitted it since;
        any other projector gets the rows widened to its inputs, the extra inputs off."""
        projector = self.projector
        if self._fittable:
            if self._fit_sample is None:
                self._fit_sample = bits[:_FIT_ROWS].copy()
            if projector.fit_id != self._fit_id:
                projector.fit1d(X=self._fit_sample)
                self._fit_id = projector.fit_id
            return projector.project(bits)
        extra = projector.n_inputs - bits.shape[1]
        return projector.project(np.pad(bits, ((0, 0), (0, extra))) if extra else bits)

    # -- the digital stage ---------------------------------------------------------------------
    def model(self) -> nn.Module:
        return self._model

    def deployed_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"weight": (self.out_features, self.n_outputs), "bias": (self.out_features,)}

    def array_attrs(self) -> dict[str, dict[str, str]]:
        axes = {"weight": "revision, output, optical feature (torch nn.Linear: out_features x "
                          "in_features)", "bias": "revision, output"}
        units = "1 (the digital layer on standardised optical features)"
        attrs = {}
        for name, text in axes.items():
            attrs[f"trained/0.{name}"] = attrs[f"deployed/{name}"] = {"axes": text, "units": units}
        return attrs

    def deploy(self) -> dict[str, np.ndarray]:
        """Freeze the digital layer; a fittable projector (an OPU) already fitted to this unit
        is refitted to it, as putting a unit back on the instrument reconfigures it."""
        if self._fit_sample is not None and self._fittable:
            self.projector.fit1d(X=self._fit_sample)
            self._fit_id = self.projector.fit_id
        linear = self._model[0]
        with torch.no_grad():
            self._deployed = {"weight": linear.weight.detach().cpu().numpy().astype(np.float32),
                              "bias": linear.bias.detach().cpu().numpy().astype(np.float32)}
        return self.read_back()

    def read_back(self) -> dict[str, np.ndarray]:
        if self._deployed is None:
            raise ValueError(f"unit {self.name!r}: nothing deployed yet; call deploy() first")
        return {k: v.copy() for k, v in self._deployed.items()}

    def matches(self, expected: dict[str, np.ndarray]) -> bool:
        if self._deployed is None or expected.keys() != self._deployed.keys():
            return False
        return all(np.shape(expected[k]) == v.shape and np.allclose(expected[k], v, rtol=0, atol=1e-6)
                   for k, v in self._deployed.items())

    def expected(self, h: np.ndarray) -> None:
        """None: the optical stage can only be known by measuring it."""
        return None

    def measure(self, h: np.ndarray) -> np.ndarray:
        """A fresh optical measurement through the deployed digital layer, (n, out_features)."""
        if self._deployed is None:
            raise ValueError(f"unit {self.name!r}: call deploy() before measure()")
        return self.measure_prepared(self.prepare(h))

    def measure_prepared(self, inputs: np.ndarray) -> np.ndarray:
        """measure() of rows whose optical stage prepare() measured already: the deployed
        digital layer on them (a site keeps a pass's optical features to train on them)."""
        if self._deployed is None:
            raise ValueError(f"unit {self.name!r}: call deploy() before measure()")
        z = inputs @ self._deployed["weight"].T + self._deployed["bias"]
        return apply_activation(self.activation, z)
