"""Twin of a LightOn OPU: y = |R x|^2 seen by an 8-bit camera.

R (max_n_features x n_components) is complex Gaussian and seeded; a binary input x lights
its ones on the DMD; the camera counts photo-electrons (shot noise) and saturates at 255.
As on the real OPU, `fit` sets the exposure from the mean number of ones in the fit data
and keeps it for every transform until the next fit: the exposure scales inversely with the
ones so that the mean output sits at `auto_exposure_counts` (many inputs on: a short
exposure, no saturation; few on: a longer one, up to `max_exposure_us`; lightonml itself
only ever shortens it). Without fit data the base exposure is used.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labpnn.errors import DeviceError
from labpnn.instruments.opu import OPUFront
from labpnn.protocols import Health
from labpnn.sim_devices.optics import CHUNK, ScatteringMedium, detect

FAULTS = {"exposure_collapse": "the exposure drops by `factor` (default 1e-3): outputs near zero",
          "saturate": "the exposure rises by `factor` (default 1e3): outputs stuck at 255"}
_FIT_ROWS = 1000  # the auto-exposure counts ones on at most this many fit samples
MAX_MATRIX_BYTES = 4 * 2**30  # R is complex64: 8 bytes per element


class SimOPUSettings(BaseModel):
    """The twin's physics knobs (the OPU client's options `seed`, `exposure_us`, `frametime_us`,
    and the server's command line, map onto these)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    exposure_us: float = Field(400.0, gt=0, description="base exposure")
    frametime_us: float = Field(0.0, ge=0, description="time per input frame (real OPU ~500)")
    reconfigure_us: float = Field(0.0, ge=0, description="time a fit (reconfiguration: input window, "
                                  "exposure) keeps the twin busy")
    counts_per_us: float = Field(0.5, gt=0, description="mean output per us with all inputs on")
    auto_exposure_counts: float = Field(40.0, gt=0, description="mean output the "
                                        "auto-exposure aims the fit data at")
    max_exposure_us: float = Field(4000.0, gt=0, description="longest auto-exposure")
    electrons_per_count: float = Field(4.0, gt=0)
    shot_noise: bool = True


def matrix_too_large(n_components: int, max_n_features: int) -> str | None:
    """Why the twin's transmission matrix R cannot be held in memory, or None when it can:
    past MAX_MATRIX_BYTES, or past the memory this machine has free."""
    need = 8 * int(n_components) * int(max_n_features)
    try:
        import psutil
        free = int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a dependency
        free = MAX_MATRIX_BYTES
    if need <= min(MAX_MATRIX_BYTES, free):
        return None
    limit = (f"the twin's limit is {MAX_MATRIX_BYTES / 2**30:.0f} GiB" if need > MAX_MATRIX_BYTES
             else f"this machine has {free / 2**30:.1f} GiB free")
    return (f"R of {max_n_features} x {n_components} (max_n_features x n_components) would "
            f"take {need / 2**30:.1f} GiB of memory; {limit}")


class SimOPU:
    """The OPU twin's physics; driven by SimOPUDevice (in process) or the OPU server."""

    def __init__(self, n_components: int, max_n_features: int, **settings: Any):
        if n_components < 1 or max_n_features < 1:
            raise ValueError(f"OPU twin: n_components ({n_components}) and max_n_features "
                             f"({max_n_features}) must be >= 1")
        problem = matrix_too_large(n_components, max_n_features)
        if problem:
            raise ValueError(f"OPU twin: {problem}")
        self.n_components = int(n_components)
        self.max_n_features = int(max_n_features)
        self.settings = SimOPUSettings(**settings)
        self._medium = ScatteringMedium(self.max_n_features, self.n_components, self.settings.seed)
        self._lock = threading.RLock()
        self._rng = np.random.default_rng(self.settings.seed + 1)
        self.active = False
        self.faults: dict[str, dict[str, Any]] = {}
        self.n_features: int | None = None
        self.exposure_us = self.settings.exposure_us

    def identity(self) -> str:
        return (f"labpnn SimOPU twin (R {self.max_n_features}x{self.n_components}, "
                f"seed {self.settings.seed})")

    def open(self) -> dict[str, Any]:
        """Light source on."""
        with self._lock:
            self.active = True
            return {"identity": self.identity(), "simulated": True}

    def close(self) -> None:
        """Light source off."""
        with self._lock:
            self.active = False

    def fit(self, n_features: int, X: np.ndarray | None = None) -> dict[str, Any]:
        """Set the input size, and the exposure from the ones in X (base exposure without X)."""
        with self._lock:
            if not 1 <= n_features <= self.max_n_features:
                raise ValueError(f"n_features {n_features} must be in 1..{self.max_n_features}")
            s = self.settings
            if s.reconfigure_us:  # sleep(0) still yields the core: on a busy machine, milliseconds
                time.sleep(s.reconfigure_us * 1e-6)
            self.n_features = int(n_features)
            self.exposure_us = s.exposure_us
            if X is not None and X.size:
                fill = float(np.mean(X[:_FIT_ROWS], dtype=np.float64))
                if fill > 0:
                    self.exposure_us = min(s.max_exposure_us, s.auto_exposure_counts / (s.counts_per_us * fill))
            return {"n_features": self.n_features, "exposure_us": self.exposure_us}

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Binary X (n, n_features) -> uint8 counts (n, n_components)."""
        with self._lock:
            if not self.active:
                raise DeviceError("the light source is off: open the OPU first", "opu twin")
            if self.n_features is None:
                raise ValueError("call fit before transform")
            if X.ndim != 2 or X.shape[1] != self.n_features:
                raise ValueError(f"input of shape {X.shape}, expected (n, {self.n_features})")
            if X.dtype != np.uint8 or X.max(initial=0) > 1:
                raise ValueError(f"input must be binary uint8 (0/1), got {X.dtype} "
                                 f"up to {X.max(initial=0)}")
            s = self.settings
            exposure = self.exposure_us
            for kind, default in (("exposure_collapse", 1e-3), ("saturate", 1e3)):
                if kind in self.faults:
                    exposure *= self.faults[kind].get("factor", default)
            # |R x|^2 has mean ones/max_n_features: rescale so that its mean is the fill fraction
            # of the n_features used (the real OPU spreads them over the whole DMD)
            e_per_unit = np.float32(s.counts_per_us * exposure * s.electrons_per_count
                                    * self.max_n_features / self.n_features)
            out = np.empty((len(X), self.n_components), np.uint8)
            for start in range(0, len(X), CHUNK):
                electrons = self._medium.intensity(X[start:start + CHUNK])
                electrons *= e_per_unit
                if s.shot_noise:
                    detect(electrons, 0.0, self._rng)
                electrons *= np.float32(1 / s.electrons_per_count)
                np.clip(electrons, 0, 255, out=electrons)
                out[start:start + CHUNK] = electrons  # truncation: the ADC floors
            if s.frametime_us:
                time.sleep(s.frametime_us * 1e-6 * X.shape[0])
            return out

    def linear_transform(self, X: np.ndarray) -> np.ndarray:
        """Binary X (n, n_features) -> Re(R x) (n, n_components) float32, noise-free."""
        with self._lock:
            if not self.active:
                raise DeviceError("the light source is off: open the OPU first", "opu twin")
            return self._medium.linear(X)

    def reset(self) -> None:
        with self._lock:
            self.faults.clear()
            self.n_features = None
            self.exposure_us = self.settings.exposure_us

    def self_test(self) -> Health:
        """Project a fixed half-on probe at the base exposure; the output must be lit and
        mostly unsaturated."""
        with self._lock:
            if not self.active:
                return Health(False, 1, "light source off")
            s = self.settings
            probe = (np.random.default_rng(0).random((4, self.max_n_features)) < 0.5).astype(np.float32)
            counts = self._medium.intensity(probe) * (s.counts_per_us * s.exposure_us)
            if self.faults:
                return Health(False, 2, f"faults active: {sorted(self.faults)}")
            mean, saturated = float(counts.mean()), float(np.mean(counts >= 255))
            ok = mean >= 1 and saturated < 0.5
            return Health(ok, 0 if ok else 3, f"probe mean {mean:.1f} counts, {saturated:.1%} saturated")

    def check_fault(self, kind: str, **params: Any) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown OPU fault {kind!r}; known: "
                             + ", ".join(f"{k} ({v})" for k, v in FAULTS.items()))

    def inject_fault(self, kind: str, **params: Any) -> None:
        self.check_fault(kind, **params)
        with self._lock:
            self.faults[kind] = params

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"identity": self.identity(), "simulated": True,
                    "settings": self.settings.model_dump() | {
                        "n_components": self.n_components, "max_n_features": self.max_n_features},
                    "n_features": self.n_features, "exposure_us": self.exposure_us,
                    "light_on": self.active, "faults": dict(self.faults)}


class SimOPUDevice(OPUFront):
    """The OPU twin in process, as a bench instrument (driver `sim-opu`): the OPU front end
    of labpnn.instruments.opu on SimOPU's physics."""

    simulated = True

    class Options(OPUFront.Options):
        seed: int = Field(0, description="seed of R and of the noise")
        exposure_us: float = Field(400.0, gt=0, description="base exposure")
        frametime_us: float = Field(0.0, ge=0, description="time per input frame (real OPU ~500)")
        reconfigure_us: float = Field(0.0, ge=0, description="time a fit (a reconfiguration) takes")

        @model_validator(mode="after")
        def _fits_in_memory(self):
            problem = matrix_too_large(self.n_components, self.max_n_features)
            if problem:
                raise ValueError(problem)
            return self

    @classmethod
    def check_resource(cls, resource: str | None) -> None:
        if resource is not None:
            raise ValueError(f"{cls.__name__} is a twin: resource must be empty, got {resource!r}")

    def _make_core(self) -> SimOPU:
        o = self.options
        return SimOPU(self.n_components, self.max_n_features, seed=o.seed, exposure_us=o.exposure_us,
                      frametime_us=o.frametime_us, reconfigure_us=o.reconfigure_us)
