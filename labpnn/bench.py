"""The bench: instruments.yaml, validated, and the instruments it names (like a QCoDeS station).

    instruments:
      crossbar:
        driver: sim-crossbar          # a driver name (labpnn.bench.drivers)
        resource: null                # a PyVISA resource string for real instruments
        options: {seed: 1}            # checked by the driver class's Options model

Instruments are constructed on load (which never touches hardware) and connected on demand.
"""

from __future__ import annotations

from importlib import metadata, resources
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from labpnn.config_errors import describe, read_yaml, validate
from labpnn.errors import ConfigError
from labpnn.protocols import Device

DRIVER_GROUP = "labpnn.instruments"  # entry points: pyproject [project.entry-points."labpnn.instruments"]

T = TypeVar("T")


class InstrumentEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    driver: str
    resource: str | None = None
    options: dict[str, Any] = {}


class BenchFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instruments: dict[str, InstrumentEntry]


def default_path() -> Path:
    """./instruments.yaml when there is one, else the packaged default (the twins)."""
    local = Path("instruments.yaml")
    if local.is_file():
        return local
    return Path(str(resources.files("labpnn") / "instruments.yaml"))


def drivers() -> dict[str, metadata.EntryPoint]:
    """The instrument classes a bench may name, by driver name: labpnn's own and any package's
    that registers an entry point in the group `labpnn.instruments`."""
    return {ep.name: ep for ep in metadata.entry_points(group=DRIVER_GROUP)}


def driver_class(driver: str) -> type:
    return drivers()[driver].load()


class Bench:
    """The named instruments of one bench file."""

    def __init__(self, devices: dict[str, Device], source: Path):
        self.devices = devices
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None) -> Bench:
        path = Path(path) if path is not None else default_path()
        return cls.from_spec(validate(BenchFile, read_yaml(path, "bench file"), f"bench file {path}"), path)

    @classmethod
    def from_spec(cls, spec: BenchFile, path: Path) -> Bench:
        """The instruments of a validated bench file (or site file) read from `path`."""
        if not spec.instruments:
            raise ConfigError(f"bench file {path}: 'instruments' is empty")
        devices = {name: _construct(path, name, entry) for name, entry in spec.instruments.items()}
        return cls(devices, path)

    def __getitem__(self, name: str) -> Device:
        try:
            return self.devices[name]
        except KeyError:
            raise ConfigError(f"the bench ({self.source}) has no instrument {name!r}; "
                              f"it has: {', '.join(sorted(self.devices))}") from None

    def require(self, name: str, capability: type[T], who: str) -> T:
        """The instrument `name`, checked to offer `capability` (a runtime-checkable protocol)."""
        device = self[name]
        if not isinstance(device, capability):
            raise ConfigError(f"{who} needs a {capability.__name__}; instrument {name!r} "
                              f"({type(device).__module__}.{type(device).__name__}) is not one")
        return device

    def snapshot(self, names: list[str] | None = None) -> dict[str, Any]:
        return {name: self.devices[name].snapshot() for name in (names or sorted(self.devices))}

    def safe_state(self, names: list[str] | None = None) -> list[str]:
        """Every instrument (or those named) to its safe state; returns the failures, never raises."""
        failures = []
        for name in names or list(self.devices):
            try:
                self.devices[name].safe_state()
            except Exception as exc:
                failures.append(f"{name}: {exc}")
        return failures

    def close(self) -> None:
        for device in self.devices.values():
            try:
                device.safe_state()
            finally:
                device.close()


def _construct(path: Path, name: str, entry: InstrumentEntry) -> Device:
    where = f"bench file {path}: instrument {name!r}"
    known = drivers()
    if entry.driver not in known:
        raise ConfigError(f"{where}: key 'driver': unknown driver {entry.driver!r}; "
                          f"known: {', '.join(sorted(known))}")
    cls = driver_class(entry.driver)
    check = getattr(cls, "check_resource", None)
    if check is not None:
        try:
            check(entry.resource)
        except ValueError as exc:
            raise ConfigError(f"{where}: key 'resource': {exc}") from None
    try:
        cls.Options(**entry.options)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe(exc, 'options')}") from None
    device = cls(name=name, resource=entry.resource, **entry.options)
    if not isinstance(device, Device):
        raise ConfigError(f"{where}: driver {entry.driver!r} does not implement the Device protocol")
    return device
