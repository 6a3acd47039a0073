"""Instruments and units at a site, seen from the coordinator: the engine drives them as if
they were local (Device, Unit), and every call runs at the site that holds them.

The coordinator keeps a copy of each unit's model (what the engine checkpoints and logs); its
parameters travel to the site before a call that uses them, only when they changed since.
`ClusterBench` is the bench of a cluster: its devices are `RemoteDevice`s, and the units the
engine builds on it are `RemoteUnit`s, built at their site.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labpnn.bench import Bench
from labpnn.errors import ClusterError, ConfigError
from labpnn.protocols import Health
from labpnn.sites import site as tasks
from labpnn.sites.cluster import Sites

log = logging.getLogger(__name__)
_EXPECTED_HELD = 8  # expected(h) results held for the health check's next question


class RemoteDevice:
    """An instrument at a site: the Device methods, run there."""

    def __init__(self, sites: Sites, name: str):
        self._sites, self.name = sites, name
        self.site = sites.site_of([name])
        self.simulated = bool(self.site.instruments[name]["simulated"])

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._sites.call([self.name], tasks.device_call, self.name, method, args, kwargs)

    @property
    def connected(self) -> bool:
        return bool(self._call("connected"))

    def connect(self) -> None:
        self._call("connect")

    def close(self) -> None:
        self._call("close")

    def __enter__(self) -> RemoteDevice:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def identity(self) -> str:
        return self._call("identity")

    def reset(self) -> None:
        self._call("reset")

    def safe_state(self) -> None:
        try:
            self._call("safe_state")
        except ClusterError as exc:  # a lost site: nothing to reach (its worker left it safe when it could)
            log.warning("%s: safe state not confirmed: %s", self.name, exc)

    def self_test(self) -> Health:
        return self._call("self_test")

    def snapshot(self) -> dict[str, Any]:
        return {**self._call("snapshot"), "site": self.site.name, "host": self.site.host}

    # FaultInjectable, for a twin at the site (fault recipes and tests)
    def inject_fault(self, kind: str, **params: Any) -> None:
        self._injectable()
        self._call("inject_fault", kind, **params)

    def check_fault(self, kind: str, **params: Any) -> None:
        self._injectable()
        self._call("check_fault", kind, **params)

    def clear_faults(self) -> None:
        self._injectable()
        self._call("clear_faults")

    def _injectable(self) -> None:
        if not self.site.instruments[self.name].get("injectable"):
            raise ConfigError(f"instrument {self.name!r} at site {self.site.name!r} is not a twin that can "
                              "simulate faults")


class RemoteUnit:
    """A unit built at the site holding its instruments (Unit protocol), plus site-side training."""

    def __init__(self, sites: Sites, index: int, spec, in_features: int, seed: int, measure_format: str = "float32"):
        self._sites, self.index = sites, index
        self._names = list(spec.instruments)
        where = sites.site_of(self._names)
        self.site, self.host, self.address = where.name, where.host, where.address
        self._key = f"{uuid.uuid4().hex}-{index}"
        self._lock = threading.Lock()
        info = self._call(tasks.open_unit, self._key, index, spec.model_dump(), in_features, seed, measure_format)
        self.name, self.in_features, self.out_features = info["name"], info["in_features"], info["out_features"]
        self._model: torch.nn.Module = info["model"]
        self._deployed_shapes = info["deployed_shapes"]
        self._predicts = info["predicts"]
        self._held = _fingerprint(self._model)  # the parameters the site holds
        self.keep = False  # measure() keeps its rows at the site (set around a pass's training split)
        self._kept: set[str] = set()  # digests of the chunks the site keeps
        self._expected: dict[str, np.ndarray] = {}  # digest -> expected(h) got with measure(h)

    def _call(self, task, *args) -> Any:
        return self._sites.call(self._names, task, *args, unit=self.index)

    def _unit_call(self, method: str, *args: Any) -> Any:
        params = self._changed()
        try:
            return self._call(tasks.unit_call, self._key, method, args, params)
        except BaseException:
            self._held = None  # not known whether they arrived: send them next time
            raise

    def _changed(self) -> dict[str, np.ndarray] | None:
        """The model's parameters when the site does not hold them yet (else None)."""
        with self._lock:
            now = _fingerprint(self._model)
            if now == self._held:
                return None
            self._held = now
            return {k: v.detach().cpu().numpy().copy() for k, v in self._model.state_dict().items()}

    def traffic(self) -> dict[str, Any]:
        """What this unit's calls cost so far: payload bytes each way, seconds at the site."""
        return self._sites.unit_traffic[self.index].as_dict()

    # -- Unit
    def instruments(self) -> list[RemoteDevice]:
        return [RemoteDevice(self._sites, n) for n in self._names]

    def prepare(self, h: np.ndarray) -> np.ndarray:
        return self._unit_call("prepare", h)

    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def last_frame(self) -> None:
        """None: camera frames and OPU images stay at the site (only features travel)."""
        return None

    def deployed_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._deployed_shapes)

    def deploy(self) -> dict[str, np.ndarray]:
        return self._unit_call("deploy")

    def read_back(self) -> dict[str, np.ndarray]:
        return self._unit_call("read_back")

    def matches(self, expected: dict[str, np.ndarray]) -> bool:
        return self._unit_call("matches", expected)

    def measure(self, h: np.ndarray) -> np.ndarray:
        """measure(h) at the site; expected(h), which the health check asks for next, comes with it."""
        keep, params = self.keep, self._changed()
        try:
            out, expected = self._call(tasks.measure, self._key, h, params, keep, self._predicts)
        except BaseException:
            self._held = None
            raise
        name = tasks.digest(h) if keep or expected is not None else None
        with self._lock:
            if keep:
                self._kept.add(name)
            if expected is not None:
                while len(self._expected) >= _EXPECTED_HELD:  # chunks measured but never checked
                    self._expected.pop(next(iter(self._expected)))
                self._expected[name] = expected
        return out

    def expected(self, h: np.ndarray) -> np.ndarray | None:
        if not self._predicts:
            return None
        with self._lock:
            got = self._expected.pop(tasks.digest(h), None)
        return got if got is not None else self._unit_call("expected", h)

    # -- training at the site (the parallel scheme)
    def load_inputs(self, revision: int, objective, x: np.ndarray, targets: dict[str, np.ndarray], h: np.ndarray,
                    settings, seed: int, batch: int) -> None:
        """What the unit trains on in `revision`, measured at its site: prepare(h), with x and the
        objective's targets. Rows the site kept from the last pass (measured with `keep`) do not
        travel again, nor does h when it is x itself."""
        params = self._changed()
        try:
            self._call(tasks.load_inputs, self._key, revision, objective, self._named(x, batch), targets,
                       None if h is x else self._named(h, batch), settings.model_dump(), seed, batch, params)
        except BaseException:
            self._held = None
            raise
        finally:
            with self._lock:
                self._kept.clear()  # the site's are used up (or, after a failure, not known)

    def _named(self, rows: np.ndarray, batch: int) -> np.ndarray | tasks.Kept:
        """rows as the site's kept chunks when it keeps them all, else the rows themselves."""
        names = tuple(tasks.digest(rows[a:a + batch]) for a in range(0, len(rows), batch))
        with self._lock:
            return tasks.Kept(names) if names and set(names) <= self._kept else rows

    def train(self, revision: int, start: int, stop: int, state: bytes | None, final: bool) -> dict[str, Any]:
        """Steps [start, stop) at the site; on the last chunk the coordinator's model takes the
        trained parameters (which the site then holds)."""
        out = self._call(tasks.train, self._key, revision, start, stop, state, final)
        if out["params"] is not None:
            with self._lock:
                self._model.load_state_dict({k: torch.as_tensor(v) for k, v in out["params"].items()})
                self._held = _fingerprint(self._model)
        return out


class ClusterBench(Bench):
    """The bench of a cluster of sites: every instrument a RemoteDevice at the site holding it."""

    def __init__(self, sites: Sites):
        super().__init__({n: RemoteDevice(sites, n) for n in sites.holders}, Path(f"cluster {sites.address}"))
        self.sites = sites

    def build_unit(self, index: int, spec, in_features: int, seed: int, measure_format: str = "float32") -> RemoteUnit:
        """Recipe unit `index`, built at the site holding its instruments."""
        return RemoteUnit(self.sites, index, spec, in_features, seed, measure_format)


def _fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
