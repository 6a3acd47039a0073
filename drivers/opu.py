"""LightOn OPU client in the style of lightonml: `OPU(n_components, max_n_features, simulated)`.

One interface, three ways to an OPU:
- `simulated=True`: the in-process twin (labpnn.sim_devices.opu.SimOPU), as lightonml's
  simulated OPU;
- `resource="tcp://host:port"`: an OPU server speaking labpnn.drivers.opu_protocol
  (`labpnn sim opu --tcp 127.0.0.1:PORT` serves the twin);
- otherwise the real OPU through the lightonml package (optional, imported on connect).

Unlike lightonml, construction never touches the device: `connect()` (or `with opu:`) opens
the light source. `fit1d` sets the input size and, from the ones in X, the exposure; it is
kept across reconnects. The OPU is also a labpnn Projector: `project(x)` is `transform(x)`
as float32, fitting on the first batch if `fit1d` was not called. The input encoders
(BinaryThresholdEncoder, SeparatedBitPlanEncoder and its decoder) are in
labpnn.drivers.opu_encoding.
"""

from __future__ import annotations

import math
import socket
import threading
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labpnn.drivers.opu_protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    parse_tcp_resource,
    recv_message,
    send_message,
)
from labpnn.errors import DeviceError, TransportError
from labpnn.protocols import Health

_FIT_SAMPLE_ROWS = 1000  # fit data kept to re-fit after a reconnect (the exposure depends on it)
LIGHTONML_MISSING = ("lightonml is not installed. It pins an old NumPy: install it in its own "
                     "environment on the OPU host and reach it over the network "
                     "(resource tcp://host:port), or use simulated=True for the twin")


class OPU:
    """An Optical Processing Unit: binary x (n, n_features) -> uint8 |R x|^2 (n, n_components)."""

    TWIN_OPTIONS = frozenset({"seed", "exposure_us", "frametime_us"})

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n_components: int = Field(1000, ge=1, description="outputs (camera pixels read)")
        max_n_features: int = Field(1000, ge=1, description="largest binary input")
        simulated: bool = Field(False, description="the in-process twin instead of a device")
        seed: int = Field(0, description="twin only: seed of R and of the noise")
        exposure_us: float = Field(400.0, gt=0, description="twin only: base exposure")
        frametime_us: float = Field(0.0, ge=0, description="twin only: time per input frame")
        timeout_s: float = Field(30.0, gt=0, description="network only: answer timeout")

        @model_validator(mode="after")
        def _twin_options_need_the_twin(self):
            twin_only = OPU.TWIN_OPTIONS & self.model_fields_set
            if twin_only and not self.simulated:
                raise ValueError(f"options {sorted(twin_only)} apply to the simulated OPU only "
                                 "(a server's twin takes them on its command line)")
            return self

    def __init__(self, n_components: int = 1000, max_n_features: int = 1000, simulated: bool = False,
                 *, name: str = "opu", resource: str | None = None, **options: Any):
        self.check_resource(resource)
        if simulated and resource is not None:
            raise ValueError(f"OPU {name!r}: simulated=True and resource {resource!r} conflict")
        self.name = name
        self.resource = resource
        self.options = self.Options(n_components=n_components, max_n_features=max_n_features,
                                    simulated=simulated, **options)
        self.n_components = self.options.n_components
        self.max_n_features = self.options.max_n_features
        self.simulated = self.options.simulated  # a server reports whether it serves a twin on connect
        self._local_twin = self.options.simulated
        self.n_features: int | None = None
        self.fit_id = 0  # changes at every fit1d/reset: users sharing the OPU can tell theirs is gone
        self.last_frame: np.ndarray | None = None  # the last output, as a 2-D image (GUI)
        self._fit_sample: np.ndarray | None = None
        self._core: Any = None
        self._lock = threading.RLock()

    @classmethod
    def check_resource(cls, resource: str | None) -> None:
        if resource is not None:
            parse_tcp_resource(resource)

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
        if self._local_twin:
            from labpnn.sim_devices.opu import SimOPU
            o = self.options
            return SimOPU(self.n_components, self.max_n_features, seed=o.seed,
                          exposure_us=o.exposure_us, frametime_us=o.frametime_us)
        if self.resource is not None:
            return _RemoteCore(self.name, self.resource, self.options.timeout_s,
                               self.n_components, self.max_n_features)
        return _LightonmlCore(self.name, self.n_components, self.max_n_features)

    def close(self) -> None:
        """Switch the light source off and release the OPU."""
        with self._lock:
            if self._core is not None and self._core.active:
                self._core.close()

    def __enter__(self) -> OPU:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            settings = self.options.model_dump(exclude={"timeout_s"} if self._local_twin else self.TWIN_OPTIONS)
            settings["n_features"] = self.n_features
            snap = {"identity": self._core.identity() if self.connected else f"OPU {self.name!r} (not connected)",
                    "simulated": self.simulated, "resource": self.resource, "settings": settings}
            if self.connected:
                snap["device"] = self._core.snapshot()
            return snap

    # -- FaultInjectable (twins, in process or behind a server) --------------------------------
    def inject_fault(self, kind: str, **params: Any) -> None:
        with self._lock:
            self._connected_core().inject_fault(kind, **params)

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


class _RemoteCore:
    """An OPU behind an OPU server (labpnn.drivers.opu_protocol over TCP)."""

    def __init__(self, name: str, resource: str, timeout_s: float, n_components: int,
                 max_n_features: int):
        self.name, self.resource, self.timeout_s = name, resource, timeout_s
        self.address = parse_tcp_resource(resource)
        self.dims = {"n_components": n_components, "max_n_features": max_n_features}
        self.active = False
        self._sock: socket.socket | None = None

    def open(self) -> dict:
        try:
            self._sock = socket.create_connection(self.address, timeout=self.timeout_s)
        except OSError as exc:
            raise TransportError(f"cannot reach the OPU server at {self.resource}: {exc}", self.name) from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply, _ = self._call({"op": "open", **self.dims})
        if reply.get("protocol") != PROTOCOL_VERSION:
            self._drop()
            raise DeviceError(f"OPU server at {self.resource} speaks protocol "
                              f"{reply.get('protocol')}, this client {PROTOCOL_VERSION}", self.name)
        self.active = True
        return reply

    def close(self) -> None:
        try:
            self._call({"op": "close"})
        finally:
            self._drop()

    def fit(self, n_features: int, X: np.ndarray | None) -> dict:
        return self._call({"op": "fit", "n_features": n_features}, X)[0]

    def transform(self, X: np.ndarray) -> np.ndarray:
        reply, Y = self._call({"op": "transform"}, X)
        if Y is None or Y.shape != (X.shape[0], self.dims["n_components"]):
            raise DeviceError(f"OPU server answered shape {None if Y is None else Y.shape}, "
                              f"expected {(X.shape[0], self.dims['n_components'])}", self.name)
        return Y

    def identity(self) -> str:
        return self._call({"op": "identify"})[0]["identity"]

    def snapshot(self) -> dict:
        return self._call({"op": "snapshot"})[0]["snapshot"]

    def self_test(self) -> Health:
        return Health(**self._call({"op": "self_test"})[0]["health"])

    def reset(self) -> None:
        self._call({"op": "reset"})

    def inject_fault(self, kind: str, **params: Any) -> None:
        self._call({"op": "inject_fault", "kind": kind, "params": params})

    def clear_faults(self) -> None:
        self._call({"op": "clear_faults"})

    def _call(self, header: dict, array: np.ndarray | None = None) -> tuple[dict, np.ndarray | None]:
        if self._sock is None:
            raise TransportError(f"no link to the OPU server at {self.resource}: connect() first", self.name)
        try:
            send_message(self._sock, header, array)
            reply, data = recv_message(self._sock)
        except TimeoutError:
            self._drop()
            raise TransportError(f"OPU server at {self.resource}: no answer to {header['op']!r} "
                                 f"within {self.timeout_s} s", self.name) from None
        except (OSError, ProtocolError) as exc:
            self._drop()
            raise TransportError(f"OPU server at {self.resource}: link lost during "
                                 f"{header['op']!r}: {exc}", self.name) from None
        if not reply.get("ok"):
            raise DeviceError(f"OPU server: {reply.get('error', 'unspecified error')}", self.name)
        return reply, data

    def _drop(self) -> None:
        self.active = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _LightonmlCore:
    """The real OPU through lightonml (imported on open: it is optional)."""

    def __init__(self, name: str, n_components: int, max_n_features: int):
        self.name, self.n_components, self.max_n_features = name, n_components, max_n_features
        self._opu = None

    @property
    def active(self) -> bool:
        return self._opu is not None and bool(self._opu.device.active)

    def open(self) -> dict:
        if self._opu is None:
            try:
                from lightonml import OPU as LightonOPU
            except ImportError:
                raise DeviceError(LIGHTONML_MISSING, self.name) from None
            self._opu = LightonOPU(n_components=self.n_components,
                                   max_n_features=self.max_n_features, open_at_init=False)
        self._opu.open()
        return {"simulated": False}

    def close(self) -> None:
        self._opu.close()

    def fit(self, n_features: int, X: np.ndarray | None) -> dict:
        if X is None:
            self._opu.fit1d(n_features=n_features)
        else:
            self._opu.fit1d(X=X)
        return {"n_features": n_features, "exposure_us": self._opu.device.exposure_us}

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._opu.transform(X)).astype(np.uint8, copy=False)

    def identity(self) -> str:
        return f"LightOn OPU via lightonml ({self._opu.version()})"

    def snapshot(self) -> dict:
        device = self._opu.device
        return {"identity": self.identity(), "simulated": False,
                "exposure_us": device.exposure_us, "frametime_us": device.frametime_us}

    def self_test(self) -> Health:
        return Health(True, 0, "light source on") if self.active else Health(False, 1, "light source off")

    def reset(self) -> None:
        self._opu.close()
        self._opu.open()

    def inject_fault(self, kind: str, **params: Any) -> None:
        raise DeviceError("faults can be injected into a twin only, not the real OPU", self.name)

    def clear_faults(self) -> None:
        raise DeviceError("faults can be injected into a twin only, not the real OPU", self.name)
