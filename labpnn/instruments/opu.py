"""The LightOn-style OPU front end that the driver and the twin share: lightonml's
`fit1d`/`transform` API on binary inputs, the labpnn Device and Projector protocols, and
fault injection; what reaches the optics (a server, lightonml, the twin's physics) is a core
chosen by the subclass (the bench drivers `opu` and `sim-opu`).
`connect()` (or `with opu:`) opens the light source; `fit1d` sets the input size and, from
the ones in X, the exposure, and is kept across reconnects. `project(x)` is `transform(x)`
as float32, fitting on the first batch if `fit1d` was not called.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from labpnn.errors import DeviceError
from labpnn.instruments.base import Instrument
from labpnn.protocols import Health

_FIT_SAMPLE_ROWS = 1000  # fit data kept to re-fit after a reconnect (the exposure depends on it)


class OPUFront(Instrument):
    """An Optical Processing Unit: binary x (n, n_features) -> uint8 |R x|^2 (n, n_components).

    Subclasses add their Options and `_make_core()`: the object that reaches the optics
    (open, close, fit, transform, identity, snapshot, self_test, reset, inject_fault,
    clear_faults, and `active`)."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n_components: int = Field(1000, ge=1, description="outputs (camera pixels read)")
        max_n_features: int = Field(1000, ge=1, description="largest binary input")

    def __init__(self, n_components: int = 1000, max_n_features: int = 1000, *, name: str = "opu",
                 resource: str | None = None, **options: Any):
        super().__init__(name, resource, n_components=n_components, max_n_features=max_n_features, **options)
        self.n_components = self.options.n_components
        self.max_n_features = self.options.max_n_features
        self.simulated = type(self).simulated  # a server reports whether it serves a twin on connect
        self.n_features: int | None = None
        self.fit_id = 0  # changes at every fit1d/reset: users sharing the OPU can tell theirs is gone
        self.last_frame: np.ndarray | None = None  # the last output, as a 2-D image (GUI)
        self._fit_sample: np.ndarray | None = None
        self._core: Any = None

    # -- Projector ---------------------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return self.n_features or self.max_n_features

    @property
    def n_outputs(self) -> int:
        return self.n_components

    def project(self, x) -> np.ndarray:
        """transform(x) as float32; fits on x first if fit1d was never called."""
        with self._lock:
            if self.n_features is None:
                self.fit1d(X=x)
            return self.transform(x).astype(np.float32)

    # -- lightonml-style API -----------------------------------------------------------------
    def fit1d(self, X=None, n_features: int | None = None) -> None:
        """Set the input size from X or n_features; with X, the exposure follows its ones."""
        with self._lock:
            if (X is None) == (n_features is None):
                raise ValueError(f"OPU {self.name!r}: fit1d takes X or n_features (one of them)")
            if X is not None:
                X, _ = self._binary(X, "fit1d")
                n_features = X.shape[1]
            if not 1 <= int(n_features) <= self.max_n_features:
                raise ValueError(f"OPU {self.name!r}: n_features {n_features} must be in "
                                 f"1..{self.max_n_features} (max_n_features)")
            self._fit_sample = None if X is None else X[:_FIT_SAMPLE_ROWS].copy()
            self.n_features = int(n_features)
            self.fit_id += 1
            if self.connected:
                self._core.fit(self.n_features, self._fit_sample)

    def transform(self, X) -> np.ndarray:
        """Binary uint8 X (n, n_features), or one vector -> uint8 intensities (n, n_components)."""
        with self._lock:
            X, single = self._binary(X, "transform")
            if self.n_features is None:
                raise ValueError(f"OPU {self.name!r}: call fit1d before transform")
            if X.shape[1] != self.n_features:
                raise ValueError(f"OPU {self.name!r}: input has {X.shape[1]} features, the OPU "
                                 f"was fitted for {self.n_features}")
            Y = self._connected_core().transform(X)
            if len(Y):
                self.last_frame = _as_image(Y[-1])
            return Y[0] if single else Y

    def linear_transform(self, X) -> np.ndarray:
        """Binary X (n, n_features) -> the linear image Re(R x) (n, n_components) float32, where
        the core has one (the twin; a real OPU through lightonml)."""
        with self._lock:
            X, single = self._binary(X, "linear_transform")
            if self.n_features is None or X.shape[1] != self.n_features:
                raise ValueError(f"OPU {self.name!r}: fit1d for {X.shape[1]} features first")
            Y = self._connected_core().linear_transform(X)
            return Y[0] if single else Y

    def resized(self, **dims: int) -> OPUFront:
        """The same OPU with other dimensions (n_components, max_n_features; a twin draws R for
        them): connected if this one was (this one is then closed), fitted as this one was."""
        with self._lock:
            other = type(self)(name=self.name, resource=self.resource,
                               **(self.options.model_dump() | dims))
            if self.connected:
                self.close()
                other.connect()
            if self._fit_sample is not None:
                other.fit1d(X=self._fit_sample)
            elif self.n_features is not None:
                other.fit1d(n_features=self.n_features)
            return other

    def open(self) -> None:
        """lightonml's name for connect(): acquire the OPU and switch the light source on."""
        self.connect()

    # -- Device ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._core is not None and self._core.active

    def connect(self) -> None:
        with self._lock:
            if self.connected:
                return
            if self._core is None:
                self._core = self._make_core()
            info = self._core.open()
            self.simulated = self.simulated or bool(info.get("simulated"))
            if self.n_features is not None:
                self._core.fit(self.n_features, self._fit_sample)

    def _make_core(self):
        raise NotImplementedError

    def close(self) -> None:
        """Switch the light source off and release the OPU."""
        with self._lock:
            if self._core is not None and self._core.active:
                self._core.close()

    def identity(self) -> str:
        with self._lock:
            return self._connected_core().identity()

    def reset(self) -> None:
        """Back to the power-on state: faults cleared, fit forgotten (fit1d again)."""
        with self._lock:
            self._connected_core().reset()
            self.n_features = None
            self._fit_sample = None
            self.fit_id += 1

    def safe_state(self) -> None:
        """Light source off; never raises (the link may be gone)."""
        with self._lock:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - a lost link is already a safe state
                pass

    def self_test(self) -> Health:
        with self._lock:
            if not self.connected:
                return Health(False, 1, "not connected")
            try:
                return self._core.self_test()
            except DeviceError as exc:
                return Health(False, 2, str(exc))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            settings = {**self.options.model_dump(), "n_features": self.n_features}
            snap = {"identity": self._core.identity() if self.connected else f"OPU {self.name!r} (not connected)",
                    "simulated": self.simulated, "resource": self.resource, "settings": settings}
            if self.connected:
                snap["device"] = self._core.snapshot()
            return snap

    # -- FaultInjectable (twins, in process or behind a server) --------------------------------
    def inject_fault(self, kind: str, **params: Any) -> None:
        with self._lock:
            self._connected_core().inject_fault(kind, **params)

    def check_fault(self, kind: str, **params: Any) -> None:
        with self._lock:
            self._connected_core().check_fault(kind, **params)

    def clear_faults(self) -> None:
        with self._lock:
            self._connected_core().clear_faults()

    # -- helpers -----------------------------------------------------------------------------
    def _connected_core(self):
        if not self.connected:
            raise DeviceError("not connected: use `with opu:` or connect() first", self.name)
        return self._core

    def _binary(self, X, where: str) -> tuple[np.ndarray, bool]:
        X = np.asarray(X)
        single = X.ndim == 1
        if single:
            X = X[None]
        if X.ndim != 2:
            raise ValueError(f"OPU {self.name!r}: {where} takes (n, n_features) binary input, "
                             f"got shape {X.shape}")
        if not (X.dtype == bool or np.issubdtype(X.dtype, np.integer)):
            raise ValueError(f"OPU {self.name!r}: {where} takes binary 0/1 integers (uint8), got "
                             f"dtype {X.dtype}; encode real features first (BinaryThresholdEncoder,"
                             " SeparatedBitPlanEncoder)")
        if X.size and (X.min() < 0 or X.max() > 1):
            raise ValueError(f"OPU {self.name!r}: {where} input is not binary: values "
                             f"{X.min()}..{X.max()}, expected only 0 and 1")
        return np.ascontiguousarray(X, dtype=np.uint8), single


def _as_image(vector: np.ndarray) -> np.ndarray:
    """An output vector as a near-square 2-D image (zero-padded), for display."""
    width = math.isqrt(max(len(vector) - 1, 0)) + 1
    image = np.zeros(width * math.ceil(len(vector) / width), vector.dtype)
    image[: len(vector)] = vector
    return image.reshape(-1, width)
