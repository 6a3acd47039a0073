"""The run engine: a deep PNN trained unit by unit in deploy-measure-retrain cycles (Qt-free).

For unit l: optimise its model with PIB on the measured outputs of unit l-1, deploy it to
the instrument (read back), measure it over the training and test data, checkpoint. Then a
digital readout on the last unit's measured features. Pause, resume and abort may be
requested from any thread; they are honoured at the next checkpoint (between PIB steps and
between measurement batches). Abort and every failure leave each instrument in its safe
state with the reason recorded in the run file.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from labpnn import data, readout
from labpnn.bench import Bench
from labpnn.errors import AbortRequested, ConfigError, LabpnnError
from labpnn.events import Event, EventBus
from labpnn.pib import UnitOptimiser
from labpnn.protocols import FaultInjectable, Unit
from labpnn.provenance import provenance
from labpnn.recipe import Recipe, parse_recipe
from labpnn.runlog import RunLayout, RunLog, UnitLayout
from labpnn.units import build_units

LOGGED_KINDS = {"state", "phase", "deployed", "accuracy", "warning", "fault", "info"}


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
        missing = [n for n in recipe.instruments() if n not in bench.devices]
        if missing:
            raise ConfigError(f"recipe {recipe.name!r} uses instrument(s) {', '.join(missing)} that the bench "
                              f"({bench.source}) lacks; it has: {', '.join(sorted(bench.devices))}")
        if _log is None and self.path.exists():
            raise ConfigError(f"{self.path} exists already: choose another --out, or --resume it")

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

    # -- the run
    def execute(self) -> State:
        """Run to the end (done), an abort (back to idle) or a failure (failed, re-raised)."""
        names = self.recipe.instruments()
        log_sub = None
        try:
            self._set_state(State.RUNNING)
            for name in names:
                if not self.bench[name].connected:
                    self.bench[name].connect()
            dataset = data.load(self.recipe.dataset.name, n_train=self.recipe.dataset.n_train,
                                n_test=self.recipe.dataset.n_test, seed=self.recipe.dataset.seed,
                                path=self.recipe.dataset.path)
            units = build_units(self.recipe, self.bench, dataset.x_train.shape[1])
            if self._log is None:
                self._log = RunLog.create(self.path, self._layout(units, dataset), recipe=self.recipe.model_dump(),
                                          bench=self.bench.snapshot(names),
                                          provenance=provenance(self.recipe, self.bench, names, dataset))
            log_sub = self.bus.subscribe(self._record)
            self._set_state(State.RUNNING)
            self._train(units, dataset)
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
            self._safe_state(names)
            if log_sub:
                log_sub()
            if self._log is not None:
                self._log.close()

    def _train(self, units: list[Unit], ds: data.Dataset) -> None:
        done = set(self._log.checkpoints())
        h_train, h_test = ds.x_train, ds.x_test
        for index, unit in enumerate(units):
            for fault in self.recipe.faults.inject:
                if fault.unit == index and (index, 0, "optimised") not in done:
                    self._inject(fault)
            h_train, h_test = self._unit(index, 0, unit, h_train, h_test, ds, done)
        self._readout(h_train, h_test, ds)

    def _unit(self, index: int, rev: int, unit: Unit, h_train: np.ndarray, h_test: np.ndarray,
              ds: data.Dataset, done: set) -> tuple[np.ndarray, np.ndarray]:
        """Optimise, deploy and measure one unit (each phase skipped when already checkpointed)."""
        log = self._log
        model = unit.model()
        if (index, rev, "optimised") in done:
            model.load_state_dict({k: torch.as_tensor(v) for k, v in log.read_params(index, rev, "trained").items()})
        else:
            inputs = self._batched(unit.prepare, h_train, index, "prepare")
            self._optimise(index, rev, unit, inputs, ds)
            log.params(index, rev, "trained", {k: v.detach().numpy() for k, v in model.state_dict().items()})
            log.checkpoint(index, rev, "optimised")
        if (index, rev, "measured") in done:
            return log.read_features(index, rev, "train"), log.read_features(index, rev, "test")
        self._deploy(index, rev, unit, done)
        f_train = self._measure(index, rev, unit, h_train, "train")
        f_test = self._measure(index, rev, unit, h_test, "test")
        log.checkpoint(index, rev, "measured")
        acc_train, acc_test = readout.probe_accuracy(f_train, ds.y_train, f_test, ds.y_test, ds.n_classes)
        for split, value in (("train", acc_train), ("test", acc_test)):
            log.accuracy(index, rev, split, value, "probe")
            self._emit("accuracy", f"unit {index} linear probe, {split}: {100 * value:.1f} %", index,
                       split=split, value=value, what="probe")
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
            self._emit("step", "", index, step=step, steps=settings.steps, loss=rec.loss, I_XZ=rec.i_xz, I_YZ=rec.i_yz)
            self._emit("info_plane", "", index, step=step, I_XZ=rec.i_xz, I_YZ=rec.i_yz, revision=rev)

    def _deploy(self, index: int, rev: int, unit: Unit, done: set) -> None:
        self._checkpoint()
        if (index, rev, "deployed") in done:
            expected = self._log.read_params(index, rev, "deployed")
            if unit.matches(expected):
                self._emit("info", f"unit {index}: the hardware still holds the deployed parameters; "
                                   "not reprogrammed", index)
                return
            self._emit("warning", f"unit {index}: the hardware no longer holds the deployed parameters "
                                  "(read back and compared); reprogramming", index)
        self._emit("phase", f"unit {index}: deploying to {', '.join(d.name for d in unit.instruments())}",
                   index, phase="deploy", steps=1)
        deployed = unit.deploy()
        self._log.params(index, rev, "deployed", deployed)
        self._log.checkpoint(index, rev, "deployed")
        self._emit("deployed", f"unit {index}: deployed and read back", index, **deployed)

    def _measure(self, index: int, rev: int, unit: Unit, h: np.ndarray, split: str) -> np.ndarray:
        repeats = self.recipe.measure.repeats

        def measure(chunk: np.ndarray) -> np.ndarray:
            return np.mean([unit.measure(chunk) for _ in range(repeats)], axis=0, dtype=np.float32)

        out = np.empty((len(h), unit.out_features), np.float32)
        for start, chunk in self._pipelined(measure, h, index, split):
            out[start:start + len(chunk)] = chunk
            self._log.features(index, rev, split, start, chunk)
        return out

    def _batched(self, fn: Callable[[np.ndarray], np.ndarray], h: np.ndarray, index: int, split: str) -> np.ndarray:
        return np.concatenate([chunk for _, chunk in self._pipelined(fn, h, index, split)])

    def _pipelined(self, fn: Callable[[np.ndarray], np.ndarray], h: np.ndarray, index: int,
                   split: str) -> Iterator[tuple[int, np.ndarray]]:
        """fn over h in instrument-sized batches, the next batch in flight while the caller
        processes the previous one; a checkpoint between batches."""
        size = self.recipe.measure.batch_size
        starts = list(range(0, len(h), size))
        self._emit("phase", f"unit {index}: measuring {split} ({len(h)} inputs)", index,
                   phase="measure", split=split, steps=len(h))
        with ThreadPoolExecutor(1, thread_name_prefix=f"measure-u{index}") as pool:
            pending = pool.submit(fn, h[:size])
            for i, start in enumerate(starts):
                result = pending.result()
                self._checkpoint()
                if i + 1 < len(starts):
                    pending = pool.submit(fn, h[starts[i + 1]:starts[i + 1] + size])
                self._emit("measure", "", index, split=split, done=start + len(result), total=len(h))
                yield start, np.asarray(result, np.float32)

    def _readout(self, f_train: np.ndarray, f_test: np.ndarray, ds: data.Dataset) -> None:
        self._checkpoint()
        self._emit("phase", "digital readout", None, phase="readout", steps=1)
        spec = self.recipe.readout
        params = readout.fit_readout(f_train, ds.y_train, ds.n_classes, steps=spec.steps,
                                     weight_decay=spec.weight_decay)
        self._log.readout(params, 0)
        for split, f, y in (("train", f_train, ds.y_train), ("test", f_test, ds.y_test)):
            value = readout.accuracy(params, f, y)
            self._log.accuracy(None, 0, split, value, "readout")
            self._emit("accuracy", f"readout accuracy, {split}: {100 * value:.2f} %", None,
                       split=split, value=value, what="readout")

    def _inject(self, fault) -> None:
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
            if not self._pause:
                return
        self._set_state(State.PAUSING)
        self._safe_state(self.recipe.instruments())
        self._set_state(State.PAUSED)
        with self._cond:
            while self._pause and not self._abort:
                self._cond.wait(0.5)
            if self._abort:
                raise AbortRequested(self._abort)
        self._set_state(State.RUNNING)

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
            self._log.event(ev)
