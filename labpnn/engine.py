"""The run engine: one recipe trained on one bench by its scheme, logged to one HDF5 file (Qt-free).

The plan: connect the recipe's instruments, build its units, open the run file, hand the run to
the recipe's scheme (labpnn.schemes; the cascade by default) through a RunContext, and end with
every instrument in its safe state. Pause, resume, abort and on-demand checks may be requested
from any thread; they are honoured at the next checkpoint (between optimisation steps and
between measurement batches). The run's states move along labpnn.run_state.TRANSITIONS; every
result is an event (labpnn.events) that the run log records as a subscriber.

Where the rest lives: run_context (what a scheme may use), link (batching, pipelining, retry,
reconnect, re-deploy), fault_policy (what each faults.on_persistent does), health (channel
statistics), runlog.recorder (events into the run file).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import numpy as np

from labpnn import costs, data
from labpnn.bench import Bench
from labpnn.errors import AbortRequested, ConfigError, DataError, DeviceError, LabpnnError, RunLogError
from labpnn.events import Event, EventBus, InfoEvent, StateChanged, WarningEvent
from labpnn.health import describe_channels
from labpnn.link import MeasurementLink
from labpnn.provenance import provenance
from labpnn.recipe import Recipe, parse_recipe
from labpnn.run_context import RunContext
from labpnn.run_state import State, StateMachine
from labpnn.runlog import RunLayout, RunLog, UnitLayout
from labpnn.runlog.recorder import RunRecorder
from labpnn.schemes import SCHEMES
from labpnn.protocols import DescribesArrays, FaultInjectable, Replaying, Unit
from labpnn.units import build_units

__all__ = ["Run", "State"]


class Run:
    """One training run of a recipe on a bench, logged to one HDF5 file.

    `Run(recipe, bench, path)` starts a new run; `Run.reopen(path, bench)` continues a killed,
    aborted or failed one from its file. `execute()` runs it (blocking; the GUI calls it on a
    worker thread), once. From any thread: pause(), unpause(), abort(), check(); `states` is the
    state machine (its hooks, wait_for()).
    """

    def __init__(self, recipe: Recipe, bench: Bench, path: str | Path, *, _log: RunLog | None = None):
        self.recipe = recipe
        self.bench = bench
        self.path = Path(path)
        self.bus = EventBus()
        self.states = StateMachine()
        self.states.on_transition(lambda old, new, reason: self.emit(StateChanged(state=new.value, reason=reason)))
        self.link = MeasurementLink(recipe.measure, recipe.faults, self._checkpoint, self.emit)
        self._log = _log
        self._ctx: RunContext | None = None
        self._executed = False
        self._cond = threading.Condition(threading.RLock())
        self._pausing = threading.Lock()
        self._pause = False
        self._abort: str | None = None
        self._check = False
        missing = [n for n in recipe.instruments() if n not in bench.devices]
        if missing:
            raise ConfigError(f"recipe {recipe.name!r} uses instrument(s) {', '.join(missing)} that the bench "
                              f"({bench.source}) lacks; it has: {', '.join(sorted(bench.devices))}")
        if _log is None and self.path.exists():
            raise ConfigError(f"{self.path} exists already: choose another output file, or continue that run "
                              "(labpnn run --resume)")

    @classmethod
    def reopen(cls, path: str | Path, bench: Bench) -> Run:
        """The run recorded in `path` (killed, aborted or failed), to execute() to its end."""
        log = RunLog.resume(path)
        return cls(parse_recipe(log.recipe, f"recipe stored in {path}"), bench, path, _log=log)

    # -- control, from any thread
    @property
    def state(self) -> State:
        return self.states.state

    def pause(self) -> None:
        with self._cond:
            self._pause = True

    def unpause(self) -> None:
        """Continue a paused run (or cancel a pause not yet reached)."""
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

    def emit(self, event: Event) -> None:
        self.bus.emit(event)

    # -- the run
    def _dataset(self) -> data.Dataset:
        """The recipe's dataset, or its RL environment (labpnn.rl.env.Environment)."""
        if self.recipe.env is not None:
            from labpnn.rl.env import Environment

            return Environment(self.recipe.env, self.recipe.seed)
        spec = self.recipe.dataset
        try:
            return data.load(spec.name, **spec.load_options())
        except DataError as exc:
            raise ConfigError(f"{self.recipe.source}: dataset: {exc}") from None

    def _check_injections(self) -> None:
        """Every fault the recipe injects, checked against its twin before the run file exists: a
        twin, a kind it knows, parameters it takes (FaultInjectable.check_fault)."""
        for i, fault in enumerate(self.recipe.faults.inject):
            where = f"{self.recipe.source}: faults.inject.{i}"
            device = self.bench[fault.instrument]
            if not isinstance(device, FaultInjectable):
                raise ConfigError(f"{where}: instrument {fault.instrument!r} is not a twin that can simulate "
                                  "faults")
            try:
                device.check_fault(fault.kind, **fault.params)
            except (ValueError, TypeError, DeviceError) as exc:  # DeviceError: a twin behind a server
                raise ConfigError(f"{where}: {exc}") from None

    def execute(self) -> State:
        """Run to the end (done), an abort (back to idle) or a failure (failed, re-raised)."""
        if self._executed:
            raise LabpnnError(f"{self.path}: this run was executed already; continue it with Run.reopen()")
        self._executed = True
        names = self.recipe.instruments()
        to_events = _LogToEvents(self.emit)
        logging.getLogger("labpnn").addHandler(to_events)
        unsubscribe = self.bus.subscribe(RunRecorder(self._log), critical=True) if self._log else None
        started, rss_start = time.perf_counter(), costs.rss_mb()
        try:
            self.states.move(State.RUNNING)
            ds = self._dataset()  # an RL environment too: checked before any instrument is touched
            self.link.connect([self.bench[n] for n in names])
            for name in names:  # a replay refuses, before anything runs, a recipe it has no recording for
                if isinstance(self.bench[name], Replaying):
                    self.bench[name].check_recipe(self.recipe)
            units = build_units(self.recipe, self.bench, ds.in_features if self.recipe.env else ds.x_train.shape[1])
            scheme = SCHEMES.build(self.recipe.scheme_spec(), "scheme")
            self._check_injections()
            if self._log is None:
                self._log = RunLog.create(self.path, self._layout(units, ds), recipe=self.recipe.model_dump(),
                                          bench=self.bench.snapshot(names),
                                          provenance=provenance(self.recipe, self.bench, names, ds))
                self._log.set_state(self.state.value)  # the file starts in the run's state
                unsubscribe = self.bus.subscribe(RunRecorder(self._log), critical=True)
            self._ctx = RunContext(self.recipe, ds, units, self._log, self.link, _Control(self), self.emit,
                                   self.bench)
            scheme.run(self._ctx)
            self._safe_state(names)
            self._record_costs(started, rss_start)
            self.states.move(State.DONE)
            return State.DONE
        except AbortRequested as exc:
            self.states.move(State.ABORTING, str(exc))
            self._safe_state(names)
            self._record_costs(started, rss_start)
            self.states.move(State.IDLE, f"aborted: {exc}")
            return State.IDLE
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, LabpnnError) else f"{type(exc).__name__}: {exc}"
            self._safe_state(names)
            with contextlib.suppress(Exception):  # the run file may be what failed: raise the failure
                self._record_costs(started, rss_start)
            self.states.move(State.FAILED, reason)
            raise
        finally:
            logging.getLogger("labpnn").removeHandler(to_events)
            if unsubscribe:
                unsubscribe()
            if self._log is not None:
                self._log.close()

    @property
    def dataset(self) -> data.Dataset | None:
        """The dataset (or RL environment) the run trains on, once execute() has loaded it."""
        return self._ctx.dataset if self._ctx is not None else None

    def predict(self, x) -> np.ndarray:
        """After a run that ended done: class probabilities (n, n_classes) of inputs x (n, d) as
        the instruments measure them through every deployed unit, then the fitted readout (the
        verification pass's measurement; labpnn.generalise uses it). The instruments are back in
        their safe state afterwards. Not logged in the run file."""
        if self.state is not State.DONE or self._ctx is None:
            raise LabpnnError(f"{self.path}: predict() needs a run executed to its end in this process "
                              f"(state is {self.state.value})")
        if not self._ctx.readout_params:
            raise LabpnnError(f"{self.path}: scheme {self._ctx.recipe.scheme_spec()!r} fitted no readout; "
                              "there is nothing to predict with")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self._ctx.units[0].in_features:
            raise ValueError(f"predict: inputs must be (n, {self._ctx.units[0].in_features}), got {x.shape}")
        names = self.recipe.instruments()
        for name in names:  # the safe state may have closed it (an OPU's light source)
            if not self.bench[name].connected:
                self.bench[name].connect()
        try:
            return self._ctx.predict(x)
        finally:
            self._safe_state(names)

    def _record_costs(self, started: float, rss_start: float | None) -> None:
        """This execution's bill (labpnn.costs) into the run file's site records, however it
        ended (done, aborted or failed; nothing to record before the run file exists)."""
        if self._log is None:
            return
        try:
            self._log.site_record(costs.record(self.link.costs, started, rss_start))
        except (RunLogError, OSError) as exc:  # a run file from before site records, or one failing
            self.emit(WarningEvent(text=f"costs not recorded: {exc}"))

    def _layout(self, units: list[Unit], ds: data.Dataset) -> RunLayout:
        if self.recipe.env is not None:  # an environment: no samples to keep, no readout
            return RunLayout(units=self._unit_layouts(units), n_train=0, n_test=0, n_classes=ds.n_classes)
        return RunLayout(
            units=self._unit_layouts(units),
            n_train=len(ds.x_train), n_test=len(ds.x_test), n_classes=ds.n_classes,
            readout_param_shapes={"weight": (ds.n_classes, units[-1].out_features), "bias": (ds.n_classes,),
                                  "mean": (units[-1].out_features,), "std": (units[-1].out_features,)})

    def _unit_layouts(self, units: list[Unit]) -> list[UnitLayout]:
        return [UnitLayout(name=u.name, kind=spec.kind, in_features=u.in_features, out_features=u.out_features,
                           param_shapes={k: tuple(v.shape) for k, v in u.model().state_dict().items()},
                           deployed_shapes=u.deployed_shapes(), steps=self.recipe.unit_pib(i).steps,
                           array_attrs=u.array_attrs() if isinstance(u, DescribesArrays) else {})
                for i, (u, spec) in enumerate(zip(units, self.recipe.units))]

    def _checkpoint(self) -> None:
        """Between steps: honour abort and pause (instruments safe while paused), run checks."""
        with self._cond:
            if self._abort:
                raise AbortRequested(self._abort)
            check, self._check = self._check, False
            pause = self._pause
        if check:
            self._self_tests()
        if not pause:
            return
        with self._pausing:  # a scheme's threads (the parallel scheme's) pause once, together
            with self._cond:
                if not self._pause or self._abort:  # another thread paused, and was resumed (or aborted)
                    if self._abort:
                        raise AbortRequested(self._abort)
                    return
            self.states.move(State.PAUSING)
            self._safe_state(self.recipe.instruments())
            self.states.move(State.PAUSED)
            with self._cond:
                while self._pause and not self._abort:
                    self._cond.wait(0.5)
                if self._abort:
                    raise AbortRequested(self._abort)
            for name in self.recipe.instruments():  # a safe state may have closed it (an OPU's light source)
                device = self.bench[name]
                if not device.connected:
                    device.connect()
                    self.emit(InfoEvent(text=f"{name}: reconnected after the pause"))
            self.states.move(State.RUNNING)

    def _self_tests(self) -> None:
        """The on-demand checks (Run.check): every instrument's self-test, as events."""
        for name in self.recipe.instruments():
            try:
                health = self.bench[name].self_test()
            except DeviceError as exc:
                self.emit(WarningEvent(text=f"{name} self-test failed: {exc}"))
                continue
            if health.ok:
                self.emit(InfoEvent(text=f"{name} self-test passed: {health.detail}"))
            else:
                self.emit(WarningEvent(text=f"{name} self-test reports fault {health.code}: {health.detail}"))
        faulty = {i: self._ctx.faulty(i) for i in range(len(self._ctx.units))} if self._ctx else {}
        self.emit(InfoEvent(text="channel health: " + ("; ".join(
            f"unit {i}: {describe_channels(c)}" for i, c in faulty.items() if c) or "no broken channel found so far")))

    def _safe_state(self, names: list[str]) -> None:
        for failure in self.bench.safe_state(names):
            self.emit(WarningEvent(text=f"could not put {failure}"))


class _Control:
    """The run's pause and checkpoint, as a scheme's context and the fault policies use them."""

    def __init__(self, run: Run):
        self.pause = run.pause
        self.checkpoint = run._checkpoint


class _LogToEvents(logging.Handler):
    """Warnings that drivers and twins log during a run become the run's warning events."""

    def __init__(self, emit):
        super().__init__(logging.WARNING)
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        self._emit(WarningEvent(text=record.getMessage()))
