"""The measurement link: a unit's instruments driven in instrument-sized batches, the next batch
in flight while the previous one is checked and logged, a lost link retried with back-off and a
reconnect that re-identifies the instrument and re-deploys what it should hold."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from labpnn.costs import HardwareCounter
from labpnn.errors import DeviceError, TransportError
from labpnn.events import Event, InfoEvent, Measured, PhaseStarted, WarningEvent
from labpnn.protocols import Device, Unit

if TYPE_CHECKING:
    from labpnn.recipe import FaultPolicy as LinkSettings
    from labpnn.recipe import MeasureSpec


class MeasurementLink:
    """The engine's side of every instrument call. `checkpoint` honours pause and abort (between
    batches, and before each reconnect attempt); `emit` publishes events."""

    def __init__(self, measure: MeasureSpec, faults: LinkSettings, checkpoint: Callable[[], None],
                 emit: Callable[[Event], None]):
        self.measure_spec = measure
        self.faults = faults
        self.checkpoint = checkpoint
        self.emit = emit
        self.identities: dict[str, str] = {}
        self.deployed: dict[int, dict[str, np.ndarray]] = {}  # what each unit's hardware should hold
        self.costs = HardwareCounter()  # what was asked of the instruments (labpnn.costs)

    def connect(self, devices: list[Device]) -> None:
        """Open each instrument (unless open), remember its identity, report a failing self-test."""
        for device in devices:
            if not device.connected:
                device.connect()
            self.identities[device.name] = device.identity()
            health = device.self_test()
            if not health.ok:
                self.emit(WarningEvent(text=f"{device.name} self-test reports fault {health.code}: {health.detail}"))

    # -- deploying
    def deploy(self, index: int, unit: Unit) -> dict[str, np.ndarray]:
        """Program the unit's parameters (again from the start after a lost link: write-verify
        makes that safe); returns them as read back."""
        self.deployed.pop(index, None)  # replaced now: a reconnect must not restore the old one
        started = time.perf_counter()
        try:
            deployed = unit.deploy()
        except TransportError as exc:
            deployed = self.retry(lambda _: unit.deploy(), None, index, unit, exc, what="deployment")
        self.costs.deployed(deployed, time.perf_counter() - started)
        self.deployed[index] = deployed
        return deployed

    def ensure_deployed(self, index: int, unit: Unit, expected: dict[str, np.ndarray] | None = None) -> None:
        """Before measuring a unit again: reprogram it if the hardware no longer holds what it
        should (`expected`, else what was deployed last)."""
        if expected is not None:
            self.deployed[index] = expected
        if not unit.matches(self.deployed[index]):
            self.emit(InfoEvent(unit=index, text=f"unit {index}: reprogramming (the instrument held other parameters)"))
            started = time.perf_counter()
            self.deployed[index] = unit.deploy()
            self.costs.deployed(self.deployed[index], time.perf_counter() - started)

    # -- measuring
    def call(self, unit: Unit, h: np.ndarray) -> np.ndarray:
        """One batch through the unit, averaged over the recipe's repeats."""
        repeats = self.measure_spec.repeats
        started = time.perf_counter()
        out = np.mean([unit.measure(h) for _ in range(repeats)], axis=0, dtype=np.float32)
        self.costs.measured(h, out, repeats, time.perf_counter() - started)
        return out

    def batched(self, fn: Callable[[np.ndarray], np.ndarray], h: np.ndarray, index: int, split: str,
                unit: Unit | None = None) -> np.ndarray:
        return np.concatenate([chunk for _, chunk in self.pipelined(fn, h, index, split, unit)])

    def pipelined(self, fn: Callable[[np.ndarray], np.ndarray], h: np.ndarray, index: int, split: str,
                  unit: Unit | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """fn over h in instrument-sized batches, the next batch in flight while the caller
        processes the previous one; a checkpoint between batches; a lost link retried."""
        size = self.measure_spec.batch_size
        starts = list(range(0, len(h), size))
        self.emit(PhaseStarted(unit=index, phase="measure", split=split, steps=len(h)))
        with ThreadPoolExecutor(1, thread_name_prefix=f"measure-u{index}") as pool:
            pending = pool.submit(fn, h[:size])
            for i, start in enumerate(starts):
                try:
                    result = pending.result()
                except TransportError as exc:
                    result = self.retry(fn, h[start:start + size], index, unit, exc)
                self.checkpoint()
                if i + 1 < len(starts):
                    pending = pool.submit(fn, h[starts[i + 1]:starts[i + 1] + size])
                self.emit(Measured(unit=index, split=split, done=start + len(result), total=len(h)))
                yield start, np.asarray(result, np.float32)

    # -- a lost link
    def retry(self, fn, chunk: np.ndarray | None, index: int, unit: Unit | None, error: TransportError,
              what: str = "measurement") -> Any:
        """Back off, reconnect, re-identify, verify the programmed state, then fn(chunk) again;
        `what` names fn in the messages."""
        policy = self.faults
        for attempt in range(policy.retries):
            wait = policy.backoff_s * 2**attempt
            self.emit(WarningEvent(unit=index, text=f"unit {index}: {error}; reconnecting in {wait:.1f} s "
                                                    f"(attempt {attempt + 1} of {policy.retries})"))
            time.sleep(wait)
            self.checkpoint()
            try:
                self.reconnect(index, unit)
                result = fn(chunk)
                self.emit(InfoEvent(unit=index, text=f"unit {index}: link restored; {what} continues"))
                return result
            except TransportError as exc:
                error = exc
        raise TransportError(f"unit {index}: still failing after {policy.retries} reconnect attempts: {error}")

    def reconnect(self, index: int, unit: Unit | None) -> None:
        for device in unit.instruments() if unit else []:
            try:
                device.close()
            except DeviceError:
                pass
            device.connect()
            identity = device.identity()
            if identity != self.identities.get(device.name, identity):
                raise DeviceError(f"after reconnecting, a different instrument answered: {identity!r} "
                                  f"(was {self.identities[device.name]!r})", device.name)
        if unit is not None and index in self.deployed:
            self.ensure_deployed(index, unit)
