"""The run engine: a deep PNN trained unit by unit in deploy-measure-retrain cycles (Qt-free).

For unit l: optimise its model with PIB on the measured outputs of unit l-1, deploy it to
the instrument (read back), measure it over the training and test data, checkpoint. Then a
digital readout on the last unit's measured features. Pause, resume and abort may be
requested from any thread; they are honoured at the next checkpoint (between PIB steps and
between measurement batches). Abort and every failure leave each instrument in its safe
state with the reason recorded in the run file.

Faults: every measured batch is checked channel by channel (labpnn.health); a lost link is
retried with back-off and a reconnect that re-identifies the instrument and verifies its
programmed state; broken channels are recorded, and the units downstream of them are
retrained with PIB on the corrupted (or masked) measurements as a new revision.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labpnn import data, readout
from labpnn.bench import Bench
from labpnn.errors import AbortRequested, ConfigError, DeviceError, LabpnnError, TransportError
from labpnn.events import Event, EventBus
from labpnn.health import ChannelMonitor, describe_channels, no_signal, significant_drop
from labpnn.pib import UnitOptimiser
from labpnn.protocols import FaultInjectable, Unit
from labpnn.provenance import provenance
from labpnn.recipe import Recipe, parse_recipe
from labpnn.runlog import RunLayout, RunLog, UnitLayout
from labpnn.units import build_units

LOGGED_KINDS = {"state", "phase", "deployed", "accuracy", "warning", "fault", "info"}
READOUT = -1  # the unit index under which the readout is checkpointed


class State(str, enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    ABORTING = "aborting"
    DONE = "done"
    FAILED = "failed"


class Run:
    """One training run of a recipe on a bench, logged to one HDF5 file.

    Create with `Run(recipe, bench, path)` for a new run or `Run.resume(path, bench)` for a
    killed or aborted one; then call `execute()` (blocking; the GUI calls it on a worker thread).
    """

    def __init__(self, recipe: Recipe, bench: Bench, path: str | Path, *, _log: RunLog | None = None):
        self.recipe = recipe
        self.bench = bench
        self.path = Path(path)
        self.bus = EventBus()
        self._log = _log
        self._state = State.IDLE
        self._cond = threading.Condition(threading.RLock())
        self._pause = False
        self._abort: str | None = None
        self._check = False
        self._identities: dict[str, str] = {}
        self._deployed: dict[int, dict[str, np.ndarray]] = {}
        self._faulty: dict[int, dict[int, str]] = {}
        self._readout_params: dict[str, np.ndarray] = {}
        self._record_lock = threading.Lock()
        missing = [n for n in recipe.instruments() if n not in bench.devices]
        if missing:
            raise ConfigError(f"recipe {recipe.name!r} uses instrument(s) {', '.join(missing)} that the bench "
                              f"({bench.source}) lacks; it has: {', '.join(sorted(bench.devices))}")
        if _log is None and self.path.exists():
            raise ConfigError(f"{self.path} exists already: choose another output file, or resume that run")

    @classmethod
    def resume(cls, path: str | Path, bench: Bench) -> Run:
        log = RunLog.resume(path)
        return cls(parse_recipe(log.recipe, f"recipe stored in {path}"), bench, path, _log=log)

    # -- control, from any thread
    @property
    def state(self) -> State:
        return self._state

    def pause(self) -> None:
        with self._cond:
            self._pause = True

    def resume_run(self) -> None:
        with self._cond:
            self._pause = False
            self._cond.notify_all()

    def abort(self, reason: str = "aborted by the operator") -> None:
        with self._cond:
            self._abort = reason
            self._cond.notify_all()

    def check(self) -> None:
        """Run the health checks on demand: at the next checkpoint every instrument of the
        recipe self-tests (SCPI *TST? and ADC diagnostics, a camera frame, an OPU probe) and
        the results, with the channels found broken so far, become events."""
        with self._cond:
            self._check = True

    # -- the run
    def execute(self) -> State:
        """Run to the end (done), an abort (back to idle) or a failure (failed, re-raised)."""
        names = self.recipe.instruments()
        unsubscribe = None
        to_events = _LogToEvents(self)
        logging.getLogger("labpnn").addHandler(to_events)
        try:
            self._set_state(State.RUNNING)
            ds = data.load(self.recipe.dataset.name, n_train=self.recipe.dataset.n_train,
                           n_test=self.recipe.dataset.n_test, seed=self.recipe.dataset.seed,
                           path=self.recipe.dataset.path)
            self._connect(names)
            units = build_units(self.recipe, self.bench, ds.x_train.shape[1])
            if self._log is None:
                self._log = RunLog.create(self.path, self._layout(units, ds), recipe=self.recipe.model_dump(),
                                          bench=self.bench.snapshot(names),
                                          provenance=provenance(self.recipe, self.bench, names, ds))
            unsubscribe = self.bus.subscribe(self._record)
            self._set_state(State.RUNNING)
            self._train(units, ds)
            self._safe_state(names)
            self._set_state(State.DONE)
            return State.DONE
        except AbortRequested as exc:
            self._set_state(State.ABORTING, str(exc))
            self._safe_state(names)
            self._set_state(State.IDLE, f"aborted: {exc}")
            return State.IDLE
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, LabpnnError) else f"{type(exc).__name__}: {exc}"
            self._safe_state(names)
            self._set_state(State.FAILED, reason)
            raise
        finally:
            logging.getLogger("labpnn").removeHandler(to_events)
            if unsubscribe:
                unsubscribe()
            if self._log is not None:
                self._log.close()

    def _connect(self, names: list[str]) -> None:
        for name in names:
            device = self.bench[name]
            if not device.connected:
                device.connect()
            self._identities[name] = device.identity()
            health = device.self_test()
            if not health.ok:
                self._emit("warning", f"{name} self-test reports fault {health.code}: {health.detail}")

    def _train(self, units: list[Unit], ds: data.Dataset) -> None:
        done = set(self._log.checkpoints())
        h_train, h_test = ds.x_train, ds.x_test
        for index, unit in enumerate(units):
            if (index, 0, "measured") not in done:
                self._inject(index)
            h_train, h_test = self._unit(index, 0, unit, h_train, h_test, ds, done)
        accuracy = self._readout(h_train, h_test, ds, 0, done)
        if self.recipe.faults.verify:
            self._inject("verify")
            self._verify(units, ds, accuracy)

    def _unit(self, index: int, rev: int, unit: Unit, h_train: np.ndarray, h_test: np.ndarray,
              ds: data.Dataset, done: set, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Optimise (or, with train False, keep the previous revision's parameters), deploy and
        measure one unit; each phase is skipped when already checkpointed."""
        log = self._log
        model = unit.model()
        if (index, rev, "optimised") in done:
            model.load_state_dict({k: torch.as_tensor(v) for k, v in log.read_params(index, rev, "trained").items()})
        else:
            if rev > 0:
                previous = log.read_params(index, rev - 1, "trained")
                model.load_state_dict({k: torch.as_tensor(v) for k, v in previous.items()})
            if train:
                inputs = self._batched(unit.prepare, h_train, index, "prepare", unit)
                problem = no_signal(inputs, strict=True)
                if problem:  # a dead physical stage: training on it would be meaningless
                    exc = self._instrument_fault(index, "prepare", f"its physical stage gives no signal ({problem})",
                                                 [], pausable=False)
                    raise (AbortRequested if self.recipe.faults.on_persistent == "abort" else DeviceError)(str(exc))
                self._optimise(index, rev, unit, inputs, ds)
            log.params(index, rev, "trained", {k: v.detach().numpy() for k, v in model.state_dict().items()})
            log.checkpoint(index, rev, "optimised")
        if (index, rev, "measured") in done:
            # what the hardware should hold, for a verification after a resume
            self._deployed[index] = log.read_params(index, rev, "deployed")
            return log.read_features(index, rev, "train"), log.read_features(index, rev, "test")
        self._deploy(index, rev, unit, done)
        # re-measuring unchanged parameters: the previous revision is the channels' history
        reference = log.read_features(index, rev - 1, "train") if rev > 0 and not train else None
        while True:
            monitor = ChannelMonitor(unit.out_features, self._faulty.get(index), reference)
            try:
                f_train = self._measure(index, rev, unit, h_train, "train", monitor)
                f_test = self._measure(index, rev, unit, h_test, "test", monitor)
                break
            except _InstrumentFault as exc:
                self._stop_or_pause(exc)  # back here once the operator resumed: measure again
        log.checkpoint(index, rev, "measured")
        acc_train, acc_test = readout.probe_accuracy(f_train, ds.y_train, f_test, ds.y_test, ds.n_classes)
        for split, value in (("train", acc_train), ("test", acc_test)):
            log.accuracy(index, rev, split, value, "probe")
            self._emit("accuracy", f"unit {index} linear probe, {split}: {100 * value:.1f} %", index,
                       split=split, value=value, what="probe", revision=rev)
        return f_train, f_test

    def _optimise(self, index: int, rev: int, unit: Unit, inputs: np.ndarray, ds: data.Dataset) -> None:
        settings = self.recipe.unit_pib(index)
        seed = int(np.random.SeedSequence([self.recipe.seed, index, rev]).generate_state(1)[0])
        opt = UnitOptimiser(unit.model(), inputs, ds.x_train, ds.y_train, settings, seed)
        live = self._log.live_state(index, rev)
        start = 0
        if live is not None:
            last, state = live
            opt.load_state_bytes(state)
            start = last + 1
        self._emit("phase", f"unit {index}: PIB optimisation, {settings.steps} steps", index,
                   phase="optimise", steps=settings.steps, start=start)
        for step in range(start, settings.steps):
            self._checkpoint()
            rec = opt.step(step)
            self._log.step(index, rev, step, loss=rec.loss, i_xz=rec.i_xz, i_yz=rec.i_yz, state=opt.state_bytes())
            self._emit("step", "", index, step=step, steps=settings.steps, loss=rec.loss, I_XZ=rec.i_xz,
                       I_YZ=rec.i_yz, revision=rev)
            self._emit("info_plane", "", index, step=step, I_XZ=rec.i_xz, I_YZ=rec.i_yz, revision=rev)

    def _deploy(self, index: int, rev: int, unit: Unit, done: set) -> None:
        self._checkpoint()
        if (index, rev, "deployed") in done:
            expected = self._log.read_params(index, rev, "deployed")
            if unit.matches(expected):
                self._deployed[index] = expected
                self._emit("info", f"unit {index}: the hardware still holds the deployed parameters "
                                   "(read back and compared); not reprogrammed", index)
                return
            self._emit("warning", f"unit {index}: the hardware no longer holds the deployed parameters "
                                  "(read back and compared); reprogramming", index)
        self._emit("phase", f"unit {index}: deploying to {', '.join(d.name for d in unit.instruments())}",
                   index, phase="deploy", steps=1)
        self._deployed.pop(index, None)  # replaced now: a reconnect must not restore the old one
        try:
            deployed = unit.deploy()
        except TransportError as exc:  # programming again from the start is safe: write-verify
            deployed = self._retry(lambda _: unit.deploy(), None, index, unit, exc, what="deployment")
        self._deployed[index] = deployed
        self._log.params(index, rev, "deployed", deployed)
        self._log.checkpoint(index, rev, "deployed")
        self._emit("deployed", f"unit {index}: deployed and read back", index, revision=rev, **deployed)

    def _ensure_deployed(self, index: int, unit: Unit) -> None:
        """Before measuring a unit again: reprogram it if the hardware no longer holds it."""
        if not unit.matches(self._deployed[index]):
            self._emit("info", f"unit {index}: reprogramming (the instrument held other parameters)", index)
            self._deployed[index] = unit.deploy()

    def _measure(self, index: int, rev: int | None, unit: Unit, h: np.ndarray, split: str,
                 monitor: ChannelMonitor | None) -> np.ndarray:
        """Measure h through the unit, checking every batch (unless monitor is None); rows are
        logged unless rev is None."""
        repeats = self.recipe.measure.repeats

        def measure(chunk: np.ndarray) -> np.ndarray:
            return np.mean([unit.measure(chunk) for _ in range(repeats)], axis=0, dtype=np.float32)

        out = np.empty((len(h), unit.out_features), np.float32)
        size = self.recipe.measure.batch_size
        for start, chunk in self._pipelined(measure, h, index, split, unit):
            if monitor is not None:
                broken = monitor.check(chunk, unit.expected(h[start:start + size]))
                if broken:
                    self._channel_fault(index, broken, split, monitor)
                problem = no_signal(chunk)
                if problem:
                    raise self._instrument_fault(index, split, f"its outputs carry no signal ({problem})",
                                                 sorted(monitor.faulty))
                if self.recipe.faults.mask and monitor.faulty:
                    chunk[:, list(monitor.faulty)] = 0.0
            out[start:start + len(chunk)] = chunk
            frame = getattr(unit, "last_frame", None)  # what a camera or an OPU saw last
            if frame is not None:
                self._emit("frame", "", index, frame=frame, what=", ".join(d.name for d in unit.instruments()))
            if rev is not None:
                self._log.features(index, rev, split, start, chunk)
        return out

    def _batched(self, fn: Callable[[np.ndarray], np.ndarray], h: np.ndarray, index: int, split: str,
                 unit: Unit | None = None) -> np.ndarray:
        return np.concatenate([chunk for _, chunk in self._pipelined(fn, h, index, split, unit)])

    def _pipelined(self, fn: Callable[[np.ndarray], np.ndarray], h: np.ndarray, index: int, split: str,
                   unit: Unit | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """fn over h in instrument-sized batches, the next batch in flight while the caller
        processes the previous one; a checkpoint between batches; a lost link retried."""
        size = self.recipe.measure.batch_size
        starts = list(range(0, len(h), size))
        self._emit("phase", f"unit {index}: measuring {split} ({len(h)} inputs)", index,
                   phase="measure", split=split, steps=len(h))
        with ThreadPoolExecutor(1, thread_name_prefix=f"measure-u{index}") as pool:
            pending = pool.submit(fn, h[:size])
            for i, start in enumerate(starts):
                try:
                    result = pending.result()
                except TransportError as exc:
                    result = self._retry(fn, h[start:start + size], index, unit, exc)
                self._checkpoint()
                if i + 1 < len(starts):
                    pending = pool.submit(fn, h[starts[i + 1]:starts[i + 1] + size])
                self._emit("measure", "", index, split=split, done=start + len(result), total=len(h))
                yield start, np.asarray(result, np.float32)

    def _retry(self, fn, chunk: np.ndarray | None, index: int, unit: Unit | None, error: TransportError,
               what: str = "measurement") -> Any:
        """A lost link: back off, reconnect, re-identify, verify the programmed state, then
        fn(chunk) again; `what` names fn in the messages."""
        policy = self.recipe.faults
        for attempt in range(policy.retries):
            wait = policy.backoff_s * 2**attempt
            self._emit("warning", f"unit {index}: {error}; reconnecting in {wait:.1f} s "
                                  f"(attempt {attempt + 1} of {policy.retries})", index)
            time.sleep(wait)
            self._checkpoint()
            try:
                self._reconnect(index, unit)
                result = fn(chunk)
                self._emit("info", f"unit {index}: link restored; {what} continues", index)
                return result
            except TransportError as exc:
                error = exc
        raise TransportError(f"unit {index}: still failing after {policy.retries} reconnect attempts: {error}")

    def _reconnect(self, index: int, unit: Unit | None) -> None:
        for device in unit.instruments() if unit else []:
            try:
                device.close()
            except DeviceError:
                pass
            device.connect()
            identity = device.identity()
            if identity != self._identities.get(device.name, identity):
                raise DeviceError(f"after reconnecting, a different instrument answered: {identity!r} "
                                  f"(was {self._identities[device.name]!r})", device.name)
        if unit is not None and index in self._deployed:
            self._ensure_deployed(index, unit)

    def _channel_fault(self, index: int, broken: dict[int, str], split: str, monitor: ChannelMonitor) -> None:
        if monitor.instrument_broken():
            n_broken, n_live = monitor.broken_live()
            raise self._instrument_fault(index, split, f"{n_broken} of its {n_live} output channels that carried "
                                         f"signal are broken ({describe_channels(monitor.faulty)})",
                                         sorted(monitor.faulty))
        channels = sorted(broken)
        known = self._faulty.setdefault(index, {})
        known.update(broken)
        action = {"recover": "the run keeps them " + ("masked (zero)" if self.recipe.faults.mask else "as they are")
                             + " and retrains the downstream units on them",
                  "pause": "the run pauses: Resume keeps going with them, Abort stops (resumable)",
                  "abort": "the run stops (resumable with labpnn run --resume)"}[self.recipe.faults.on_persistent]
        self._emit("fault", f"unit {index}: {len(channels)} broken output channel(s) while measuring {split}: "
                            f"{describe_channels(broken)}; {action}", index, channels=channels, reasons=broken)
        if split != "verify" or self.recipe.faults.on_persistent == "abort":
            # (the verification pass records its faults with the accuracies once recovered)
            self._log.fault({"kind": "broken_channels", "unit": index, "channels": channels, "split": split,
                             "action": self.recipe.faults.on_persistent,
                             "reasons": {str(c): r for c, r in sorted(broken.items())},
                             "message": describe_channels(broken)})
        if self.recipe.faults.on_persistent == "pause":
            self.pause()
        elif self.recipe.faults.on_persistent == "abort":
            raise AbortRequested(f"unit {index}: broken output channels {channels}")

    def _instrument_fault(self, index: int, split: str, what: str, channels: list[int],
                          pausable: bool = True) -> _InstrumentFault:
        """A whole unit without signal: recorded; the caller raises what this returns."""
        policy = self.recipe.faults.on_persistent
        if policy == "pause" and not pausable:
            policy = "recover"
        then = {"pause": "the run pauses with the instruments safe: fix the instrument, then Resume "
                         "(the unit is measured again) or Abort (resumable)",
                "abort": "the run stops (idle, resumable with labpnn run --resume)",
                "recover": "retraining cannot fix this: the run stops (failed, resumable with labpnn run "
                           "--resume once the instrument is fixed)"}[policy]
        message = (f"unit {index}: {what} while measuring {split}: the instrument itself is at fault "
                   "(saturated, dark or dead detector, stuck modulator?)")
        self._emit("fault", f"{message}; {then}", index, channels=channels, split=split)
        self._log.fault({"kind": "instrument", "unit": index, "channels": channels, "split": split,
                         "action": policy, "message": message})
        return _InstrumentFault(message)

    def _stop_or_pause(self, exc: _InstrumentFault) -> None:
        """An instrument fault, per policy: stop (abort: idle; recover: failed), or pause with the
        instruments safe and return once the operator resumed."""
        policy = self.recipe.faults.on_persistent
        if policy == "abort":
            raise AbortRequested(str(exc)) from None
        if policy == "recover":
            raise DeviceError(str(exc)) from None
        self.pause()
        self._checkpoint()

    def _readout(self, f_train: np.ndarray, f_test: np.ndarray, ds: data.Dataset, rev: int, done: set) -> float:
        """Fit the digital readout on the last unit's features; returns its test accuracy."""
        self._checkpoint()
        spec = self.recipe.readout
        if (READOUT, rev, "optimised") in done:
            params = self._log.read_readout(rev)
        else:
            self._emit("phase", "digital readout", None, phase="readout", steps=1)
            params = readout.fit_readout(f_train, ds.y_train, ds.n_classes, steps=spec.steps,
                                         weight_decay=spec.weight_decay)
            self._log.readout(params, rev)
        accuracy = {}
        for split, f, y in (("train", f_train, ds.y_train), ("test", f_test, ds.y_test)):
            accuracy[split] = readout.accuracy(params, f, y)
        if (READOUT, rev, "optimised") not in done:
            for split, value in accuracy.items():
                self._log.accuracy(None, rev, split, value, "readout")
                self._emit("accuracy", f"readout accuracy, {split}: {100 * value:.2f} %", None,
                           split=split, value=value, what="readout", revision=rev)
            self._log.checkpoint(READOUT, rev, "optimised")
        self._readout_params = params
        return accuracy["test"]

    def _verify(self, units: list[Unit], ds: data.Dataset, accuracy_before: float) -> None:
        """Re-measure the deployed network on the test set, channel by channel; recover from
        broken channels by retraining every unit downstream of the first faulty one."""
        self._emit("phase", "verifying the deployed network on the hardware (test set)", None,
                    phase="verify", steps=len(units))
        known = {i: set(c) for i, c in self._faulty.items()}
        while True:
            try:
                h = ds.x_test
                first = None
                for index, unit in enumerate(units):
                    self._ensure_deployed(index, unit)
                    # the channels' history: the unit's test set as measured when it was trained
                    reference = self._log.read_features(index, self._last_rev(index), "test")
                    # downstream of a broken unit, channels see corrupted inputs: measured, not judged
                    monitor = (ChannelMonitor(unit.out_features, self._faulty.get(index), reference)
                               if first is None else None)
                    h = self._measure(index, None, unit, h, "verify", monitor)
                    if first is None and set(self._faulty.get(index, {})) - known.get(index, set()):
                        first = index
                break
            except _InstrumentFault as exc:
                self._stop_or_pause(exc)  # back here once the operator resumed: verify again
        accuracy_now = readout.accuracy(self._readout_params, h, ds.y_test)
        self._log.accuracy(None, self._last_rev(len(units) - 1), "test", accuracy_now, "verify")
        self._emit("accuracy", f"verification on the hardware, test: {100 * accuracy_now:.2f} %", None,
                   split="test", value=accuracy_now, what="verify")
        kind = "broken_channels"
        message = describe_channels(self._faulty.get(first, {})) if first is not None else ""
        if first is None and significant_drop(accuracy_before, accuracy_now, len(ds.y_test)):
            first, kind = 0, "accuracy_drop"
            policy = self.recipe.faults.on_persistent
            message = (f"test accuracy fell from {100 * accuracy_before:.1f} % to {100 * accuracy_now:.1f} % on the "
                       "hardware although every channel passes its checks (drift, stuck cells?)")
            self._emit("fault", f"verification: {message}; " + {
                "recover": "the run re-measures unit 0 and retrains every unit after it",
                "pause": "the run pauses: Resume re-measures unit 0 and retrains every unit after it, Abort stops "
                         "(resumable)",
                "abort": "the run stops (resumable with labpnn run --resume)"}[policy], None,
                before=accuracy_before, after=accuracy_now)
            if policy == "abort":
                self._log.fault({"kind": kind, "unit": None, "channels": [], "accuracy_before": accuracy_before,
                                 "accuracy_after_fault": accuracy_now, "action": policy, "message": message})
                raise AbortRequested(f"verification: {message}")
            if policy == "pause":
                self.pause()
        if first is None:
            self._emit("info", "verification: every channel healthy")
            return
        recovered = self._recover(units, ds, first)
        self._log.fault({"kind": kind, "unit": first, "channels": sorted(self._faulty.get(first, {})),
                         "accuracy_before": accuracy_before, "accuracy_after_fault": accuracy_now,
                         "accuracy_recovered": recovered, "time": time.time(),
                         "action": self.recipe.faults.on_persistent, "message": message})
        self._emit("info", f"recovered from the fault in unit {first}: test accuracy {100 * accuracy_before:.1f} % "
                           f"before, {100 * accuracy_now:.1f} % after the fault, {100 * recovered:.1f} % after "
                           "retraining the downstream units", first)

    def _recover(self, units: list[Unit], ds: data.Dataset, first: int) -> float:
        """A new revision: the faulty unit re-measured as it is now, every later unit retrained
        with PIB on those measurements, a new readout. Returns the new test accuracy."""
        done = set(self._log.checkpoints())
        rev = max(r for u, r, _ in done if u == first)
        if rev == 0 or (READOUT, rev, "optimised") in done:
            rev += 1  # a new revision, unless a recovery cut short (killed, aborted) is resumed
        h_train, h_test = (self._log.read_features(first - 1, self._last_rev(first - 1), s) for s in ("train", "test")) \
            if first > 0 else (ds.x_train, ds.x_test)
        for index in range(first, len(units)):
            h_train, h_test = self._unit(index, rev, units[index], h_train, h_test, ds, done,
                                         train=index > first)
        return self._readout(h_train, h_test, ds, rev, done)

    def _last_rev(self, index: int) -> int:
        return max(r for u, r, p in self._log.checkpoints() if u == index and p == "measured")

    def _inject(self, at: int | str) -> None:
        for fault in self.recipe.faults.inject:
            if fault.at != at:
                continue
            device = self.bench[fault.instrument]
            if not isinstance(device, FaultInjectable):
                raise ConfigError(f"recipe injects a fault into {fault.instrument!r}, which is not a twin "
                                  "that can simulate faults")
            device.inject_fault(fault.kind, **fault.params)
            self._emit("info", f"injected simulated fault {fault.kind!r} into {fault.instrument} {fault.params}")

    # -- plumbing
    def _layout(self, units: list[Unit], ds: data.Dataset) -> RunLayout:
        return RunLayout(
            units=[UnitLayout(name=u.name, kind=spec.kind, in_features=u.in_features, out_features=u.out_features,
                              param_shapes={k: tuple(v.shape) for k, v in u.model().state_dict().items()},
                              deployed_shapes=u.deployed_shapes(), steps=self.recipe.unit_pib(i).steps)
                   for i, (u, spec) in enumerate(zip(units, self.recipe.units))],
            n_train=len(ds.x_train), n_test=len(ds.x_test), n_classes=ds.n_classes,
            readout_param_shapes={"weight": (ds.n_classes, units[-1].out_features), "bias": (ds.n_classes,),
                                  "mean": (units[-1].out_features,), "std": (units[-1].out_features,)})

    def _checkpoint(self) -> None:
        """Between steps: honour abort and pause (instruments safe while paused)."""
        with self._cond:
            if self._abort:
                raise AbortRequested(self._abort)
            check, self._check = self._check, False
            pause = self._pause
        if check:
            self._self_tests()
        if not pause:
            return
        self._set_state(State.PAUSING)
        self._safe_state(self.recipe.instruments())
        self._set_state(State.PAUSED)
        with self._cond:
            while self._pause and not self._abort:
                self._cond.wait(0.5)
            if self._abort:
                raise AbortRequested(self._abort)
        for name in self.recipe.instruments():  # a safe state may have closed it (an OPU's light source)
            device = self.bench[name]
            if not device.connected:
                device.connect()
                self._emit("info", f"{name}: reconnected after the pause")
        self._set_state(State.RUNNING)

    def _self_tests(self) -> None:
        """The on-demand checks (Run.check): every instrument's self-test, as events."""
        for name in self.recipe.instruments():
            try:
                health = self.bench[name].self_test()
            except DeviceError as exc:
                self._emit("warning", f"{name} self-test failed: {exc}")
                continue
            if health.ok:
                self._emit("info", f"{name} self-test passed: {health.detail}")
            else:
                self._emit("warning", f"{name} self-test reports fault {health.code}: {health.detail}")
        faulty = {i: c for i, c in sorted(self._faulty.items()) if c}
        self._emit("info", "channel health: " + ("; ".join(f"unit {i}: {describe_channels(c)}" for i, c in
                                                          faulty.items()) or "no broken channel found so far"))

    def _safe_state(self, names: list[str]) -> None:
        for failure in self.bench.safe_state(names):
            self._emit("warning", f"could not put {failure}")

    def _set_state(self, state: State, reason: str = "") -> None:
        self._state = state
        if self._log is not None:
            self._log.set_state(state.value, reason)
        self._emit("state", f"{state.value}{': ' + reason if reason else ''}", state=state.value, reason=reason)

    def _emit(self, kind: str, message: str, unit: int | None = None, **payload) -> None:
        self.bus.emit(Event(kind, message, unit, payload))

    def _record(self, ev: Event) -> None:
        if ev.kind in LOGGED_KINDS:
            with self._record_lock:  # events may come from the measurement thread too
                self._log.event(ev)


class _InstrumentFault(LabpnnError):
    """Raised inside a measurement when a whole unit has no signal (handled by policy)."""


class _LogToEvents(logging.Handler):
    """Warnings that drivers and twins log during a run become the run's warning events."""

    def __init__(self, run: Run):
        super().__init__(logging.WARNING)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        self.run._emit("warning", record.getMessage())
