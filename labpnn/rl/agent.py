"""The agent on the hardware: acting through the deployed units, learning on copies.

`Agent` owns the units (their instruments and their models as deployed): an observation
is thermometer-coded, each unit's physical stage is measured (`unit.prepare`) and its
deployed digital part applied, the last unit's outputs are the Q-values. `Learner` trains
its own copies of the units' models with each unit's local objective on replay minibatches
and hands snapshots over; the agent deploys a snapshot when it gets one. `HardwareMeter`
times what keeps the instruments busy (measurements and deployments).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from concurrent.futures import Executor, Future

import numpy as np
import torch
from torch import nn

from labpnn.objectives.pib_td import PIBTDObjective
from labpnn.protocols import Batch
from labpnn.units.base import BOUNDED
from labpnn.rl.replay import ReplayBuffer

_GRAD_CLIP = 10.0  # max gradient norm per unit and step: TD errors are heavy-tailed early on


class HardwareMeter:
    """Seconds the instruments spent busy (measuring, reconfiguring) since `start()`: the
    union of the busy spells of every thread (actor and learner may measure at once)."""

    def __init__(self):
        self.busy_s = 0.0
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._active, self._since = 0, 0.0

    def start(self) -> None:
        with self._lock:
            self.busy_s, self.started = 0.0, time.perf_counter()
            self._since = self.started

    @contextlib.contextmanager
    def busy(self):
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self.busy_s += time.perf_counter() - max(self._since, self.started)

    def idle_fraction(self) -> float:
        elapsed = time.perf_counter() - self.started
        return max(0.0, 1.0 - self.busy_s / elapsed) if elapsed > 0 else 0.0


class Agent:
    """Epsilon-greedy actions from the deployed units. `deploy(i, state)` loads a learner
    snapshot into unit i's model and deploys it (the instrument's reconfiguration);
    `measured(rows, out, repeats, seconds)` is told of every measurement (the run's costs).

    `features(i, h)` is what unit i's digital layer reads: its optical stage measured on h
    (`unit.prepare`), each feature standardised with a mean and scale fixed at calibration
    (speckle features differ in mean and spread feature by feature; one scale for all
    leaves a linear layer badly conditioned). A unit fed by a sigmoid (or clip) unit codes its
    input over that activation's fixed range 0..1, not over the largest value of its first batch. One
    lock per unit: actor and learner take turns on an instrument."""

    def __init__(self, units, encoder, n_actions: int, seed: int, deploy=None, measured=None):
        self.units, self.encoder, self.n_actions, self.seed = units, encoder, n_actions, int(seed)
        self.meter = HardwareMeter()
        self._deploy = deploy or (lambda index, unit: unit.deploy())
        self._measured = measured or (lambda rows, out, repeats, seconds: None)
        self.deployments = 0
        self._locks = [threading.Lock() for _ in units]
        self._offset: list[np.ndarray | None] = [None] * len(units)
        self._scale: list[np.ndarray | None] = [None] * len(units)
        for before, unit in zip(units, units[1:]):
            if getattr(before, "activation", None) in BOUNDED and hasattr(unit, "input_scale"):
                unit.input_scale = 1.0

    def features(self, index: int, h: np.ndarray) -> np.ndarray:
        """Unit `index`'s measured, standardised features of its inputs h (n, in)."""
        with self._locks[index], self.meter.busy():
            started = time.perf_counter()
            u = self.units[index].prepare(h)
            self._measured(h, u, 1, time.perf_counter() - started)
        if self._offset[index] is None:
            self._offset[index] = u.mean(0)
            spread = u.std(0)  # floored: a feature still in calibration may vary later
            self._scale[index] = np.maximum(spread, 0.5 * np.sqrt(np.mean(spread**2)) or 1.0).astype(np.float32)
        return ((u - self._offset[index]) / self._scale[index]).astype(np.float32)

    def forward(self, index: int, u: np.ndarray) -> np.ndarray:
        """Unit `index`'s deployed digital layer on its features u."""
        with torch.no_grad():
            return self.units[index].model()(torch.from_numpy(u)).numpy()

    def calibrate(self, observations: np.ndarray) -> None:
        """Fix each unit's input and feature scaling on a batch of observations (the units
        freeze them at their first measurement) instead of on the first single state."""
        h = self.encoder(observations)
        for i in range(len(self.units)):
            h = self.forward(i, self.features(i, h))

    def deploy(self, index: int, state: dict | None = None) -> None:
        unit = self.units[index]
        with self._locks[index]:
            if state is not None:
                unit.model().load_state_dict(state)
            with self.meter.busy():
                self._deploy(index, unit)
        self.deployments += 1

    def measure(self, obs: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """(each unit's measured model input, Q-values) for one observation."""
        h = self.encoder(obs)
        features = []
        for i in range(len(self.units)):
            u = self.features(i, h)
            features.append(u[0])
            h = self.forward(i, u)
        return features, h[0]

    def act(self, q: np.ndarray, epsilon: float, step: int) -> int:
        rng = np.random.default_rng([self.seed, int(step)])
        if rng.random() < epsilon:
            return int(rng.integers(self.n_actions))
        return int(np.argmax(q))


def _done(value) -> Future:
    """A future already holding `value` (a measurement made in turn)."""
    future = Future()
    future.set_result(value)
    return future


class Learner:
    """Trains copies of the units' models, each on its own objective (no gradient crosses
    units) at its own learning rate (lrs, times lr_factor(step)), on replay minibatch `step`
    (drawn by (seed, step)); thread-safe snapshots.

    With `remeasure` (Agent.features) the inputs of every unit after the first are measured
    again through its optics from the learner's current upstream outputs, for the minibatch's
    states and next states: the replayed inputs of a downstream unit were measured under
    upstream weights that have moved since, so learning on them fits a Q-function of features
    the deployed agent no longer produces. The first unit's inputs (its optics on the
    observation) never go stale."""

    def __init__(self, models: list[nn.Module], objectives: list[PIBTDObjective], replay: ReplayBuffer,
                 batch_size: int, lrs: list[float], seed: int, remeasure=None, lr_factor=lambda step: 1.0):
        self.remeasure, self.lr_factor, self.lrs = remeasure, lr_factor, lrs
        self.models = [copy.deepcopy(m) for m in models]
        self.objectives, self.replay, self.batch_size, self.seed = objectives, replay, batch_size, seed
        self.optimisers = [torch.optim.Adam(list(m.parameters()) + list(o.parameters()), lr=lr)
                           for m, o, lr in zip(self.models, objectives, lrs)]
        self.steps = 0
        self._ahead: tuple[list[Batch], list] | None = None  # next step's minibatch, being measured
        self.lock = threading.Lock()
        self.last: list[dict[str, float]] = [{} for _ in models]

    def step(self, executor: Executor | None = None) -> list[dict[str, float]]:
        """One optimisation step of every unit on the same minibatch. With `remeasure`, unit
        i + 1's inputs are measured from unit i's outputs as unit i stands before this step's
        update (no gradient: the measurement cuts the graph). With an `executor` the
        measurements run there while the digital side computes: next step's minibatch is
        measured through unit i + 1 as soon as unit i's update is done (the same inputs it
        would get at the start of the next step), so the optics work through this step's
        remaining updates; without one each measurement runs in turn."""
        with self.lock:
            batches, inputs = self._ahead or self._draw(self.steps)
            self._ahead = self._draw(self.steps + 1) if executor is not None else None
            n = len(batches[0].h)
            for i, b in enumerate(batches):
                h = inputs[i].result()
                downstream = self.remeasure is not None and i + 1 < len(batches)
                if downstream and inputs[i + 1] is None:
                    inputs[i + 1] = self._measure(i, h, executor)
                self._update(i, Batch(b.x, h[:n], {**b.targets, "h_next": h[n:]}))
                if downstream and self._ahead is not None:
                    ahead = self._ahead[1]
                    ahead[i + 1] = self._measure(i, ahead[i].result(), executor)
            self.steps += 1
            return self.last

    def _draw(self, step: int) -> tuple[list[Batch], list]:
        """Replay minibatch `step` (drawn by (seed, step)) as one Batch per unit and each unit's
        inputs, states and next states stacked, as results to read: the stored ones, or None for
        a unit whose inputs are to be measured again (the replay keeps only the first unit's
        then, and the others' Batches carry its x and targets, their inputs to be replaced)."""
        stored = self.replay.batches(step, self.batch_size)  # no torch RNG used past this
        batches = stored + stored[:1] * (len(self.models) - len(stored))
        return batches, [_done(torch.cat([b.h, b.targets["h_next"]]))
                         if i == 0 or self.remeasure is None else None for i, b in enumerate(batches)]

    def _measure(self, i: int, h: torch.Tensor, executor: Executor | None):
        """Unit i + 1's inputs measured from unit i's current outputs on h, as a result to read."""
        with torch.no_grad():
            z = self.models[i](h).numpy()
        if executor is None:
            return _done(torch.from_numpy(self.remeasure(i + 1, z)))
        return executor.submit(lambda: torch.from_numpy(self.remeasure(i + 1, z)))

    def _update(self, i: int, batch: Batch) -> None:
        """Unit i's optimisation step on its own objective."""
        model, objective, opt = self.models[i], self.objectives[i], self.optimisers[i]
        for group in opt.param_groups:
            group["lr"] = self.lrs[i] * self.lr_factor(self.steps)
        loss, values = objective.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], _GRAD_CLIP)
        opt.step()
        self.last[i] = {"loss": loss.item(), **values}

    def snapshot(self, index: int) -> dict:
        """A copy of unit `index`'s model state, for the agent to deploy."""
        with self.lock:
            return copy.deepcopy(self.models[index].state_dict())

    def state(self) -> dict:
        """Steps, models, optimisers and objectives, for a checkpoint (the caller holds `lock`)."""
        return {"steps": self.steps, "models": [m.state_dict() for m in self.models],
                "optimisers": [o.state_dict() for o in self.optimisers],
                "objectives": [o.state() for o in self.objectives]}

    def load_state(self, state: dict) -> None:
        with self.lock:
            self.steps, self._ahead = int(state["steps"]), None
            for m, o, obj, ms, os_, objs in zip(self.models, self.optimisers, self.objectives,
                                                 state["models"], state["optimisers"], state["objectives"]):
                m.load_state_dict(ms)
                o.load_state_dict(os_)
                obj.load_state(objs, m)
