"""Optics twins: a scattering medium seen through a camera, fed by an SLM.

- `ScatteringMedium`: a fixed complex Gaussian transmission matrix T (n_out x n_in), seeded;
  the camera sees the speckle intensity |T E|^2 of the input field E.
- `OpticalTable`: named light paths. A `SimSLM` puts its field on the table it joined (option
  `table`), a `SimCamera` on the same table looks at that field through the medium; so the
  bench can build the two independently, as it does the real SLM and camera.
- `SimSLM`: a phase (via the LUT) or amplitude SLM whose pixels are grouped into the medium's
  input modes (`mode_block` x `mode_block` pixels per mode: the input speckle grain).
- `SimCamera`: the EMVA 1288 linear camera model (see docs/optics.md): photons -> electrons
  (quantum efficiency, Poisson shot noise, dark current), full well, read noise, system gain
  (e- per DN, analog gain in dB), quantisation to 8/12/16 bits, saturation at the top DN.

Both twins also offer a sequence mode (`show_sequence`, `grab_sequence`): a stack of frames
shown one after the other with the camera triggered on each, computed as one batch.
"""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labpnn.instruments.camera import CameraSettings, frame_health
from labpnn.instruments.slm import PhaseLUT, SLMGeometry, validate_frames
from labpnn.errors import DeviceError, TransportError
from labpnn.instruments.base import Instrument
from labpnn.protocols import Health

EXACT_POISSON_BELOW = 10.0  # e-; above, the shot noise's Gaussian approximation is used
CHUNK = 256  # rows (fields, frames) per matrix product: bounds the temporaries


class ScatteringMedium:
    """Fixed random transmission matrix, complex Gaussian with E|T_ij|^2 = 1/n_in, so a
    unit-amplitude field on every input mode gives fully developed speckle of mean 1."""

    def __init__(self, n_in: int, n_out: int, seed: int = 0):
        self.n_in, self.n_out, self.seed = n_in, n_out, seed
        rng = np.random.default_rng(seed)
        scale = np.float32(np.sqrt(0.5 / n_in))
        # stored transposed, (n_in, n_out): a batch of fields (n, n_in) multiplies on the left
        self._tt = (rng.standard_normal((n_in, 2 * n_out), dtype=np.float32) * scale).view(np.complex64)

    @property
    def matrix(self) -> np.ndarray:
        """T, (n_out, n_in) complex64 (a view)."""
        return self._tt.T

    def linear(self, fields: np.ndarray) -> np.ndarray:
        """Re(T E) for a batch of real fields (n, k <= n_in) -> (n, n_out) float32: the field's
        linear image before the camera squares it (an OPU's linear transform)."""
        if fields.ndim != 2 or fields.shape[1] > self.n_in:
            raise ValueError(f"medium: fields of shape {fields.shape}, expected (n, <= {self.n_in})")
        re = self._tt[: fields.shape[1]].view(np.float32)[:, 0::2]
        return fields.astype(np.float32, copy=False) @ re

    def intensity(self, fields: np.ndarray) -> np.ndarray:
        """|T E|^2 for a batch of fields (n, k), real or complex -> (n, n_out) float32.
        k <= n_in: the field lights the first k input modes, the others stay dark."""
        if fields.ndim != 2 or fields.shape[1] > self.n_in:
            raise ValueError(f"medium: fields of shape {fields.shape}, expected (n, <= {self.n_in})")
        n, k = fields.shape
        out = np.empty((n, self.n_out), np.float32)
        tt = self._tt[:k]
        for start in range(0, n, CHUNK):
            chunk = fields[start:start + CHUNK]
            if np.iscomplexobj(chunk):  # complex64 product, read as interleaved (re, im) float32
                z = (chunk.astype(np.complex64, copy=False) @ tt).view(np.float32)
            else:  # a real field needs half the work: real rows times the interleaved (re, im)
                z = chunk.astype(np.float32, copy=False) @ tt.view(np.float32)
            np.square(z, out=z)
            np.add(z[:, 0::2], z[:, 1::2], out=out[start:start + CHUNK])
        return out


def detect(mean_e: np.ndarray, read_noise_e: float, rng: np.random.Generator) -> np.ndarray:
    """Detected electrons for mean signals `mean_e` (float32, overwritten and returned):
    Poisson shot noise (exact below EXACT_POISSON_BELOW e-, its Gaussian approximation
    above) plus Gaussian read noise of `read_noise_e` e- rms."""
    noise = rng.standard_normal(mean_e.shape, dtype=np.float32)
    low = mean_e < EXACT_POISSON_BELOW
    exact = rng.poisson(mean_e[low]).astype(np.float32)
    if read_noise_e:
        exact += np.float32(read_noise_e) * noise[low]
    sigma = np.add(mean_e, np.float32(read_noise_e**2))
    noise *= np.sqrt(sigma, out=sigma)
    mean_e += noise
    mean_e[low] = exact
    return mean_e


class OpticalTable:
    """One named light path: the field an SLM puts on it, for the camera on the same table."""

    _tables: ClassVar[dict[str, OpticalTable]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._fields: np.ndarray | None = None

    @classmethod
    def named(cls, name: str) -> OpticalTable:
        """The table called `name`, created on first use."""
        with cls._registry_lock:
            return cls._tables.setdefault(name, cls(name))

    def put(self, fields: np.ndarray) -> None:
        """The SLM's field: (n, n_modes), one row per frame of a sequence (n = 1 for show)."""
        with self._lock:
            self._fields = fields

    def fields(self) -> np.ndarray | None:
        with self._lock:
            return self._fields

    def clear(self) -> None:
        """No SLM in the path any more: the camera sees only its own dark signal."""
        with self._lock:
            self._fields = None


class _Twin(Instrument):
    """What the optics twins share: the instrument base, connection flag, fault bookkeeping."""

    simulated = True
    FAULTS: ClassVar[dict[str, str]] = {}

    def __init__(self, name: str, resource: str | None, **options: Any):
        super().__init__(name, resource, **options)
        self._connected = False
        self.faults: dict[str, dict[str, Any]] = {}

    @classmethod
    def check_resource(cls, resource: str | None) -> None:
        if resource is not None:
            raise ValueError(f"{cls.__name__} is a twin: resource must be empty, got {resource!r}")

    @property
    def connected(self) -> bool:
        return self._connected

    def _join(self) -> None:
        """connect(): a lost link (the `disconnect` fault) is re-established."""
        self.faults.pop("disconnect", None)
        self._connected = True


    def check_fault(self, kind: str, **params: Any) -> None:
        if kind not in self.FAULTS:
            raise ValueError(f"{self.name!r}: unknown fault {kind!r}; known: "
                             + ", ".join(f"{k} ({v})" for k, v in self.FAULTS.items()))

    def inject_fault(self, kind: str, **params: Any) -> None:
        self.check_fault(kind, **params)
        with self._lock:
            self.faults[kind] = params

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def _require_link(self) -> None:
        if "disconnect" in self.faults:
            raise TransportError("link lost (injected fault)", self.name)
        if not self._connected:
            raise DeviceError("not connected: call connect() first", self.name)


class SimSLM(SLMGeometry, _Twin):
    """Twin of an SLM: grey levels -> field on the optical table (phase or amplitude)."""

    FAULTS = {"stuck": "the liquid crystal stops following new frames",
              "disconnect": "the display link is lost until the next connect()"}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        table: str = "default"
        width: int = Field(128, gt=0)
        height: int = Field(128, gt=0)
        bit_depth: Literal[8, 16] = 8
        settle_ms: float = Field(0.0, ge=0)
        lut: str | list[float] | None = None
        modulation: Literal["phase", "amplitude"] = "phase"
        mode_block: int = Field(4, ge=1, description="SLM pixels per side of one input mode")

        @model_validator(mode="after")
        def _blocks_tile_the_slm(self):
            if self.width % self.mode_block or self.height % self.mode_block:
                raise ValueError(f"mode_block {self.mode_block} must divide the SLM size "
                                 f"{self.width}x{self.height}")
            return self

    def __init__(self, name: str = "sim-slm", resource: str | None = None, **options: Any):
        super().__init__(name, resource, **options)
        self.lut = PhaseLUT(self.options.bit_depth, self.options.lut)
        if self.options.modulation == "phase":
            self._level_field = np.exp(1j * self.lut.phases).astype(np.complex64)
        else:
            self._level_field = (np.arange(2**self.bit_depth) / (2**self.bit_depth - 1)).astype(np.float32)
        self.frame: np.ndarray | None = None
        self._table = OpticalTable.named(self.options.table)

    @property
    def n_modes(self) -> int:
        b = self.options.mode_block
        return (self.options.height // b) * (self.options.width // b)

    def phase_to_grey(self, phase) -> np.ndarray:
        return self.lut.phase_to_grey(phase)

    def connect(self) -> None:
        with self._lock:
            self._join()
            self._put(np.zeros((1, *self.shape), self.lut.dtype))

    def close(self) -> None:
        with self._lock:
            if self._connected:
                self._table.clear()
            self._connected = False

    def show(self, frame) -> None:
        """Show one frame (height, width); returns after the settle time."""
        with self._lock:
            frame = validate_frames(frame, self.shape, self.bit_depth, f"SLM {self.name!r}")
            if frame.ndim != 2:
                raise ValueError(f"SLM {self.name!r}: show() takes one frame, got a stack {frame.shape}")
            self._require_link()
            self._put(frame[None])
            time.sleep(self.settle_s)

    def show_sequence(self, frames) -> None:
        """Sequence mode: the stack (n, height, width) is shown frame by frame, each held for
        the settle time while the camera takes one exposure (see SimCamera.grab_sequence)."""
        with self._lock:
            frames = validate_frames(frames, self.shape, self.bit_depth, f"SLM {self.name!r}")
            if frames.ndim != 3:
                raise ValueError(f"SLM {self.name!r}: show_sequence() takes a stack (n, h, w), "
                                 f"got {frames.shape}")
            self._require_link()
            self._put(frames)
            time.sleep(self.settle_s * len(frames))

    def _put(self, frames: np.ndarray) -> None:
        self.frame = frames[-1]
        if "stuck" in self.faults:
            return
        b = self.options.mode_block
        n, h, w = frames.shape
        fields = self._level_field[frames]
        if b > 1:
            fields = fields.reshape(n, h // b, b, w // b, b).mean(axis=(2, 4), dtype=fields.dtype)
        self._table.put(fields.reshape(n, -1))

    def identity(self) -> str:
        o = self.options
        return (f"labpnn SimSLM twin ({o.modulation}, {o.width}x{o.height} px, {o.bit_depth}-bit, "
                f"{self.n_modes} modes, table {o.table!r})")

    def reset(self) -> None:
        with self._lock:
            self.clear_faults()
            if self._connected:
                self._put(np.zeros((1, *self.shape), self.lut.dtype))

    def safe_state(self) -> None:
        with self._lock:
            if self._connected and "disconnect" not in self.faults:
                self._put(np.zeros((1, *self.shape), self.lut.dtype))

    def self_test(self) -> Health:
        with self._lock:
            if not self._connected:
                return Health(False, 1, "not connected")
            if self.faults:
                return Health(False, 2, f"faults active: {sorted(self.faults)}")
            return Health(True, 0, "twin ready")

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"identity": self.identity(), "simulated": True,
                    "settings": self.options.model_dump(), "faults": dict(self.faults)}


class SimCamera(CameraSettings, _Twin):
    """Twin of a camera looking at the speckle through the medium (EMVA 1288 model)."""

    FAULTS = {"saturate": "stray light multiplies the signal (param factor, default 1000)",
              "disconnect": "the camera link is lost until the next connect()"}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        table: str = "default"
        width: int = Field(64, gt=0)
        height: int = Field(64, gt=0)
        bit_depth: Literal[8, 12, 16] = 8
        exposure_us: float = Field(100.0, gt=0)
        gain_db: float = Field(0.0, ge=0, le=48)
        quantum_efficiency: float = Field(0.6, gt=0, le=1)
        photons_per_us: float = Field(40.0, ge=0, description="photons per pixel and us for "
                                      "speckle of unit mean intensity (all SLM modes lit)")
        dark_current_e_per_s: float = Field(20.0, ge=0)
        read_noise_e: float = Field(6.0, ge=0)
        full_well_e: float = Field(10000.0, gt=0)
        e_per_dn: float | None = Field(None, gt=0, description="system gain at 0 dB; None: "
                                       "the full well fills the DN range")
        frame_time_ms: float = Field(0.0, ge=0)
        seed: int = 0
        medium_seed: int = 0

    def __init__(self, name: str = "sim-camera", resource: str | None = None, **options: Any):
        super().__init__(name, resource, **options)
        self._exposure_us = self.options.exposure_us
        self._gain_db = self.options.gain_db
        self._rng = np.random.default_rng(self.options.seed)
        self._medium: ScatteringMedium | None = None
        self._table = OpticalTable.named(self.options.table)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.options.height, self.options.width)

    def set_exposure_us(self, us: float) -> None:
        if not us > 0:
            raise ValueError(f"camera {self.name!r}: exposure must be > 0 us, got {us}")
        with self._lock:
            self._exposure_us = float(us)

    def set_gain_db(self, db: float) -> None:
        if not 0 <= db <= 48:
            raise ValueError(f"camera {self.name!r}: gain must be in 0..48 dB, got {db}")
        with self._lock:
            self._gain_db = float(db)

    def _medium_for(self, n_in: int) -> ScatteringMedium:
        """The medium between the SLM's `n_in` modes and this camera's pixels."""
        h, w = self.shape
        if self._medium is None or self._medium.n_in != n_in:
            self._medium = ScatteringMedium(n_in, h * w, self.options.medium_seed)
        return self._medium

    def connect(self) -> None:
        with self._lock:
            self._join()

    def close(self) -> None:
        with self._lock:
            self._connected = False

    def grab(self) -> np.ndarray:
        """One frame (height, width) of the field on the table now."""
        with self._lock:
            self._require_link()
            fields = self._table.fields()
            frame = self._expose(None if fields is None else fields[-1:])[0]
            time.sleep(self.options.frame_time_ms / 1000)
            return frame

    def grab_sequence(self) -> np.ndarray:
        """Sequence mode: one frame per frame of the SLM's last sequence, (n, height, width)."""
        with self._lock:
            self._require_link()
            fields = self._table.fields()
            frames = self._expose(fields)
            time.sleep(self.options.frame_time_ms / 1000 * len(frames))
            return frames

    def _expose(self, fields: np.ndarray | None) -> np.ndarray:
        o = self.options
        h, w = self.shape
        max_dn = 2**o.bit_depth - 1
        e_per_dn = o.e_per_dn if o.e_per_dn is not None else o.full_well_e / max_dn
        photo_e = o.quantum_efficiency * o.photons_per_us * self._exposure_us
        if "saturate" in self.faults:
            photo_e *= self.faults["saturate"].get("factor", 1000.0)
        dark_e = np.float32(o.dark_current_e_per_s * self._exposure_us * 1e-6)
        n = 1 if fields is None else len(fields)
        frames = np.empty((n, h * w), np.uint8 if o.bit_depth == 8 else np.uint16)
        for start in range(0, n, CHUNK):
            if fields is None:
                electrons = np.zeros((1, h * w), np.float32)
            else:
                electrons = self._medium_for(fields.shape[1]).intensity(fields[start:start + CHUNK])
                electrons *= np.float32(photo_e)
            electrons += dark_e
            detect(electrons, o.read_noise_e, self._rng)
            np.clip(electrons, 0, o.full_well_e, out=electrons)
            electrons *= np.float32(10 ** (self._gain_db / 20) / e_per_dn)
            np.minimum(electrons, max_dn, out=electrons)
            frames[start:start + CHUNK] = electrons  # truncation: the ADC floors
        return frames.reshape(n, h, w)

    def identity(self) -> str:
        o = self.options
        return f"labpnn SimCamera twin ({o.width}x{o.height} px, {o.bit_depth}-bit, table {o.table!r})"

    def reset(self) -> None:
        with self._lock:
            self.clear_faults()
            self._exposure_us = self.options.exposure_us
            self._gain_db = self.options.gain_db

    def safe_state(self) -> None:
        """A camera emits nothing; the twin has no acquisition running between grabs."""

    def self_test(self) -> Health:
        with self._lock:
            return frame_health(self)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            settings = self.options.model_dump() | {"exposure_us": self._exposure_us,
                                                     "gain_db": self._gain_db}
            return {"identity": self.identity(), "simulated": True, "settings": settings,
                    "faults": dict(self.faults)}
