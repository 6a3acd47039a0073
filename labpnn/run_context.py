"""RunContext: everything a scheme may use of a run, and nothing else of the engine.

Each call does one phase of one unit the way every scheme needs it done: checkpointed (skipped
when the run file says it is done), resumable, logged once through events, health-checked, with
faults handled by the recipe's fault policy (labpnn.fault_policy). Revision r of a unit: 0 on
the first pass, +1 per retraining after a fault.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from labpnn import readout
from labpnn.errors import ConfigError, LabpnnError, RunLogError, TransportError
from labpnn.events import (
    Accuracy, Deployed, Event, Fault, FaultKind, Frame, InfoEvent, InfoPlane, PhaseStarted, Step, WarningEvent,
)
from labpnn.fault_policy import POLICIES, Control, FaultPolicy
from labpnn.health import ChannelFault, ChannelMonitor, describe_channels, no_signal
from labpnn.link import MeasurementLink
from labpnn.objectives import OBJECTIVES, ObjectiveContext
from labpnn.pib import UnitOptimiser
from labpnn.protocols import Batch, FaultInjectable, Objective, Unit

if TYPE_CHECKING:
    from labpnn.data import Dataset
    from labpnn.recipe import Recipe
    from labpnn.runlog import RunLog

READOUT = -1  # the unit index under which the readout is checkpointed


class InstrumentFault(LabpnnError):
    """A whole unit without signal, recorded; handled by the fault policy."""


class RunContext:
    """What a scheme works with: `recipe`, `dataset`, `units`, `log` (the RunLog), `seed`, and
    the calls below. `control` is the run's pause/abort (pause(), checkpoint())."""

    def __init__(self, recipe: Recipe, dataset: Dataset, units: list[Unit], log: RunLog,
                 link: MeasurementLink, control: Control, emit: Callable[[Event], None], bench):
        self.recipe = recipe
        self.dataset = dataset
        self.units = units
        self.log = log
        self.seed = recipe.seed
        self.link = link
        self.control = control
        self._emit = emit
        self._bench = bench
        self._faulty: dict[int, dict[int, ChannelFault]] = {}
        self._objectives: dict[int, Objective] = {}
        self.readout_params: dict[str, np.ndarray] = {}

    # -- what the run is
    @property
    def policy(self) -> FaultPolicy:
        """The fault policy now (the CLI may override the recipe's before the run starts)."""
        return POLICIES[self.recipe.faults.on_persistent]

    def objective(self, index: int) -> Objective:
        """Unit `index`'s objective, built once from the recipe."""
        if index not in self._objectives:
            unit = self.units[index]
            info = ObjectiveContext(index=index, in_features=unit.in_features, out_features=unit.out_features,
                                    n_classes=self.dataset.n_classes, settings=self.recipe.unit_pib(index),
                                    seed=self.seed + index, last=index == len(self.units) - 1)
            self._objectives[index] = OBJECTIVES.build(self.recipe.objective_spec(index),
                                                       self.recipe.objective_field(index), info)
        return self._objectives[index]

    def unit_seed(self, index: int, rev: int) -> int:
        """The seed of unit `index`'s optimisation in revision `rev` (its minibatches, its torch RNG)."""
        return int(np.random.SeedSequence([self.recipe.seed, index, rev]).generate_state(1)[0])

    def supervised_targets(self) -> dict[str, np.ndarray]:
        """The targets the dataset holds for the training rows, by the names objectives read."""
        return {"y": self.dataset.y_train}

    # -- control
    def checkpoint(self) -> None:
        """Honour pause, abort and on-demand checks (call between steps of your own)."""
        self.control.checkpoint()

    def pause(self) -> None:
        self.control.pause()

    def emit(self, event: Event) -> None:
        self._emit(event)

    def done(self, index: int, rev: int, phase: str) -> bool:
        """Whether the run file has phase ("optimised", "deployed", "measured") of unit `index`
        (READOUT: the readout), revision `rev`, checkpointed."""
        return (index, rev, phase) in self.log.checkpoints()

    def checkpoint_phase(self, index: int, rev: int, phase: str) -> None:
        self.log.checkpoint(index, rev, phase)

    def last_revision(self, index: int) -> int:
        """The last revision of unit `index` that was measured."""
        return max(r for u, r, p in self.log.checkpoints() if u == index and p == "measured")

    # -- optimising
    def optimise(self, index: int, rev: int, unit: Unit, sample: Callable[[int], Batch], *,
                 objective: Objective | None = None, steps: int | None = None) -> None:
        """Train the unit's model on `sample` with its objective (or `objective`) for `steps` steps
        (default the recipe's pib.steps), resuming from the last saved step; a revision > 0 starts
        from the previous one's trained parameters.
        Checkpointed as "optimised" with the trained parameters; when it is already, those are
        loaded into the model instead."""
        model = unit.model()
        if self.done(index, rev, "optimised"):
            self.restore(index, rev, unit)
            return
        if rev > 0:
            self._load(model, index, rev - 1)
        objective = objective or self.objective(index)
        settings = self.recipe.unit_pib(index)
        steps = settings.steps if steps is None else steps
        opt = UnitOptimiser(model, objective, sample, settings, self.unit_seed(index, rev))
        start = 0
        live = self.log.live_state(index, rev)
        if live is not None:
            last, state = live
            try:
                opt.load_state_bytes(state)
            except ValueError as exc:
                raise RunLogError(f"{self.log.path}: cannot resume unit {index} (revision {rev}) from "
                                  f"its optimiser state saved at step {last}: {exc}") from None
            start = last + 1
        self.emit(PhaseStarted(unit=index, phase="optimise", steps=steps, start=start, what=objective.name))
        for step in range(start, steps):
            self.checkpoint()
            rec = opt.step(step)
            i_xz, i_yz = rec.values.get("I_XZ", math.nan), rec.values.get("I_YZ", math.nan)
            self.log.step(index, rev, step, loss=rec.loss, i_xz=i_xz, i_yz=i_yz, state=opt.state_bytes())
            self.emit(Step(unit=index, step=step, steps=steps, loss=rec.loss, values=rec.values,
                           revision=rev))
            if "I_XZ" in rec.values and "I_YZ" in rec.values:
                self.emit(InfoPlane(unit=index, step=step, I_XZ=i_xz, I_YZ=i_yz, revision=rev))
        opt.finish()
        self._save(model, index, rev)

    def restore(self, index: int, rev: int, unit: Unit) -> None:
        """Load revision `rev`'s trained parameters (checkpointed "optimised") into the unit's model."""
        self._load(unit.model(), index, rev)

    def keep_parameters(self, index: int, rev: int, unit: Unit) -> None:
        """Revision `rev` of the unit keeps the previous revision's trained parameters (to measure
        it again as it is), checkpointed as "optimised"."""
        model = unit.model()
        self._load(model, index, rev - 1 if not self.done(index, rev, "optimised") else rev)
        if not self.done(index, rev, "optimised"):
            self._save(model, index, rev)

    def _load(self, model: torch.nn.Module, index: int, rev: int) -> None:
        params = self.log.read_params(index, rev, "trained")
        model.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})

    def _save(self, model: torch.nn.Module, index: int, rev: int) -> None:
        self.log.params(index, rev, "trained", {k: v.detach().numpy() for k, v in model.state_dict().items()})
        self.checkpoint_phase(index, rev, "optimised")

    # -- the hardware
    def prepare(self, index: int, unit: Unit, h: np.ndarray) -> np.ndarray:
        """The unit's parameter-free physical stage over h, batched (the model's inputs); a stage
        without signal stops the run (retraining on it would be meaningless)."""
        inputs = self.link.batched(unit.prepare, h, index, "prepare", unit)
        problem = no_signal(inputs, strict=True)
        if problem:
            policy = self.policy.unpausable()
            exc = self._instrument_fault(index, "prepare", f"its physical stage gives no signal ({problem})", [],
                                         policy)
            policy.after_instrument(self.control, str(exc))
        return inputs

    def deploy(self, index: int, rev: int, unit: Unit) -> dict[str, np.ndarray]:
        """Put the unit's model on its instruments (retried over a lost link), checkpointed as
        "deployed"; skipped when checkpointed and the hardware still holds it (read back)."""
        self.checkpoint()
        if self.done(index, rev, "deployed"):
            expected = self.log.read_params(index, rev, "deployed")
            if unit.matches(expected):
                self.link.deployed[index] = expected
                self.emit(InfoEvent(unit=index, text=f"unit {index}: the hardware still holds the deployed "
                                                     "parameters (read back and compared); not reprogrammed"))
                return expected
            self.emit(WarningEvent(unit=index, text=f"unit {index}: the hardware no longer holds the deployed "
                                                    "parameters (read back and compared); reprogramming"))
        self.emit(PhaseStarted(unit=index, phase="deploy", steps=1,
                               what=", ".join(d.name for d in unit.instruments())))
        deployed = self.link.deploy(index, unit)
        self.log.params(index, rev, "deployed", deployed)
        self.checkpoint_phase(index, rev, "deployed")
        self.emit(Deployed(unit=index, revision=rev, arrays=deployed))
        return deployed

    def ensure_deployed(self, index: int, unit: Unit) -> None:
        """Before measuring a unit again: reprogram it if the hardware no longer holds what it
        should (its last deployment, from the run file after a resume)."""
        expected = None
        if index not in self.link.deployed:
            expected = self.log.read_params(index, self.last_revision(index), "deployed")
        self.link.ensure_deployed(index, unit, expected)

    def faulty(self, index: int) -> dict[int, ChannelFault]:
        """The output channels of unit `index` found broken so far, with their diagnoses."""
        return dict(self._faulty.get(index, {}))

    def monitor(self, index: int, reference: np.ndarray | None = None) -> ChannelMonitor:
        """A health monitor for unit `index` that knows its broken channels; `reference`: an earlier,
        healthy measurement (the channels' history, for units without a model)."""
        return ChannelMonitor(self.units[index].out_features, self._faulty.get(index), reference)

    def measure(self, index: int, rev: int | None, unit: Unit, h: np.ndarray, split: str, *,
                monitor: ChannelMonitor | bool = True) -> np.ndarray:
        """h through the unit (n, out_features), batched and pipelined, every batch health-checked
        (monitor True: a fresh one; a ChannelMonitor: that one, e.g. shared by a unit's splits;
        False: unchecked), faults handled by policy; rows logged as `split` ("train", "test") of
        revision `rev` unless rev is None. A unit without signal, under policy pause, is measured
        again once the operator resumed."""
        mon = self.monitor(index) if monitor is True else (monitor or None)
        while True:
            try:
                return self._measure(index, rev, unit, h, split, mon)
            except InstrumentFault as exc:
                self.policy.after_instrument(self.control, str(exc))  # raises, or returns once resumed
                mon.restart()

    def measure_network(self, h: np.ndarray, split: str,
                        monitor: Callable[[int], ChannelMonitor | bool] = lambda index: False) -> np.ndarray:
        """h through every deployed unit in turn (each reprogrammed first if its instrument no
        longer holds its last deployment), rows not logged: the last unit's outputs.
        `monitor(index)` gives unit index's health check as measure() takes it (default: none)."""
        for index, unit in enumerate(self.units):
            self.ensure_deployed(index, unit)
            h = self.measure(index, None, unit, h, split, monitor=monitor(index))
        return h

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (n, n_classes) of inputs x measured through the deployed network
        and the fitted readout."""
        return readout.probabilities(self.readout_params, self.measure_network(x, "predict"))

    def measure_batch(self, index: int, unit: Unit, h: np.ndarray) -> np.ndarray:
        """A training step's minibatch through the unit on the hardware as it is now deployed:
        in instrument-sized calls through the link (averaged over the recipe's repeats),
        retried over a lost link; neither health-checked nor logged, no events (schemes that
        measure every step: pat, dfa, phyll)."""
        size, out = self.recipe.measure.batch_size, []
        for start in range(0, len(h), size):
            chunk = h[start:start + size]
            try:
                out.append(self.link.call(unit, chunk))
            except TransportError as exc:
                out.append(self.link.retry(lambda c: self.link.call(unit, c), chunk, index, unit, exc))
        return np.concatenate(out)

    def _measure(self, index: int, rev: int | None, unit: Unit, h: np.ndarray, split: str,
                 monitor: ChannelMonitor | None) -> np.ndarray:
        out = np.empty((len(h), unit.out_features), np.float32)
        size = self.recipe.measure.batch_size
        what = ", ".join(d.name for d in unit.instruments())
        for start, chunk in self.link.pipelined(lambda c: self.link.call(unit, c), h, index, split, unit):
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
            frame = unit.last_frame
            if frame is not None:
                self.emit(Frame(unit=index, frame=frame, what=what))
            if rev is not None:
                self.log.features(index, rev, split, start, chunk)
        return out

    def _channel_fault(self, index: int, broken: dict[int, ChannelFault], split: str,
                       monitor: ChannelMonitor) -> None:
        if monitor.instrument_broken():
            n_broken, n_live = monitor.broken_live()
            raise self._instrument_fault(index, split, f"{n_broken} of its {n_live} output channels that carried "
                                         f"signal are broken ({describe_channels(monitor.faulty)})",
                                         sorted(monitor.faulty))
        channels = sorted(broken)
        self._faulty.setdefault(index, {}).update(broken)
        policy = self.policy
        self.emit(Fault(unit=index, fault=FaultKind.BROKEN_CHANNELS, channels=tuple(channels), split=split,
                        action=policy.name, diagnoses={c: r.diagnosis for c, r in broken.items()},
                        reasons={c: str(r) for c, r in broken.items()},
                        detail=f"unit {index}: {len(channels)} broken output channel(s) while measuring {split}: "
                               f"{describe_channels(broken)}",
                        then=policy.channels_then(self.recipe.faults.mask),
                        # the verification pass records its faults with the accuracies once recovered
                        pending=split == "verify" and not policy.records_at_verify))
        policy.after_channels(self.control, index, channels)

    def _instrument_fault(self, index: int, split: str, what: str, channels: list[int],
                          policy: FaultPolicy | None = None) -> InstrumentFault:
        """A whole unit without signal: recorded; the caller raises what this returns."""
        policy = policy or self.policy
        message = (f"unit {index}: {what} while measuring {split}: the instrument itself is at fault "
                   "(saturated, dark or dead detector, stuck modulator?)")
        self.emit(Fault(unit=index, fault=FaultKind.INSTRUMENT, channels=tuple(channels), split=split,
                        action=policy.name, detail=message, then=policy.instrument_then()))
        return InstrumentFault(message)

    # -- the digital side
    def probe(self, index: int, rev: int, f_train: np.ndarray, f_test: np.ndarray) -> tuple[float, float]:
        """Linear-probe accuracies (train, test) of a unit's measured features, recorded."""
        ds = self.dataset
        accuracies = readout.probe_accuracy(f_train, ds.y_train, f_test, ds.y_test, ds.n_classes)
        for split, value in zip(("train", "test"), accuracies):
            self.emit(Accuracy(unit=index, split=split, value=value, what="probe", revision=rev))
        return accuracies

    def readout(self, f_train: np.ndarray, f_test: np.ndarray, rev: int) -> float:
        """Fit the digital readout on the last unit's features (revision `rev`), checkpointed;
        returns its test accuracy."""
        self.checkpoint()
        spec, ds = self.recipe.readout, self.dataset
        done = self.done(READOUT, rev, "optimised")
        if done:
            params = self.log.read_readout(rev)
        else:
            self.emit(PhaseStarted(phase="readout", steps=1))
            params = readout.fit_readout(f_train, ds.y_train, ds.n_classes, steps=spec.steps,
                                         weight_decay=spec.weight_decay)
            self.log.readout(params, rev)
        accuracy = {split: readout.accuracy(params, f, y)
                    for split, f, y in (("train", f_train, ds.y_train), ("test", f_test, ds.y_test))}
        if not done:
            for split, value in accuracy.items():
                self.emit(Accuracy(split=split, value=value, what="readout", revision=rev))
            self.checkpoint_phase(READOUT, rev, "optimised")
        self.readout_params = params
        return accuracy["test"]

    # -- simulated faults
    def inject(self, at: int | str) -> None:
        """Switch on the recipe's simulated faults due at `at` (a unit index, or "verify")."""
        for fault in self.recipe.faults.inject:
            if fault.at != at:
                continue
            device = self._bench[fault.instrument]
            if not isinstance(device, FaultInjectable):
                raise ConfigError(f"recipe injects a fault into {fault.instrument!r}, which is not a twin "
                                  "that can simulate faults")
            device.inject_fault(fault.kind, **fault.params)
            self.emit(InfoEvent(text=f"injected simulated fault {fault.kind!r} into {fault.instrument} "
                                     f"{fault.params}"))
