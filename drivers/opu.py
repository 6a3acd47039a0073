"""LightOn OPU client in the style of lightonml: `OPU(n_components, max_n_features)`.

Two ways to a real OPU, one front end (labpnn.instruments.opu.OPUFront):
- `resource="tcp://host:port"`: an OPU server speaking labpnn.instruments.opu_protocol
  (`labpnn sim opu --tcp 127.0.0.1:PORT` serves the twin that way);
- otherwise the real OPU through the lightonml package (optional, imported on connect).

The in-process twin is the bench driver `sim-opu` (labpnn.sim_devices.opu.SimOPUDevice).
Unlike lightonml, construction never touches the device. The input encoders are in
labpnn.units.opu_encoding.
"""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
from pydantic import Field

from labpnn.errors import DeviceError, TransportError
from labpnn.instruments.opu import OPUFront
from labpnn.instruments.opu_protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    parse_tcp_resource,
    recv_message,
    send_message,
)
from labpnn.protocols import Health

LIGHTONML_MISSING = ("lightonml is not installed. It pins an old NumPy: install it in its own "
                     "environment on the OPU host and reach it over the network "
                     "(resource tcp://host:port), or use the twin (bench driver sim-opu)")


class OPU(OPUFront):
    """A real OPU: over the network (resource tcp://host:port) or through lightonml."""

    class Options(OPUFront.Options):
        timeout_s: float = Field(30.0, gt=0, description="network only: answer timeout")

    @classmethod
    def check_resource(cls, resource: str | None) -> None:
        if resource is not None:
            parse_tcp_resource(resource)

    def _make_core(self):
        if self.resource is not None:
            return _RemoteCore(self.name, self.resource, self.options.timeout_s,
                               self.n_components, self.max_n_features)
        return _LightonmlCore(self.name, self.n_components, self.max_n_features)


class _RemoteCore:
    """An OPU behind an OPU server (labpnn.instruments.opu_protocol over TCP)."""

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

    def linear_transform(self, X: np.ndarray) -> np.ndarray:
        raise DeviceError(f"the OPU server at {self.resource} offers no linear transform", self.name)

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

    def check_fault(self, kind: str, **params: Any) -> None:
        self._call({"op": "check_fault", "kind": kind, "params": params})

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

    def linear_transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._opu.linear_transform(X), dtype=np.float32)

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

    def check_fault(self, kind: str, **params: Any) -> None:
        raise ValueError("faults can be injected into a twin only, not the real OPU")

    def inject_fault(self, kind: str, **params: Any) -> None:
        raise DeviceError("faults can be injected into a twin only, not the real OPU", self.name)

    def clear_faults(self) -> None:
        raise DeviceError("faults can be injected into a twin only, not the real OPU", self.name)
