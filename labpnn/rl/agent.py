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

import numpy as np
import torch
from torch import nn

from labpnn.objectives.pib_td import PIBTDObjective
from labpnn.rl.replay import ReplayBuffer

_GRAD_CLIP = 10.0  # max gradient norm per unit and step: TD errors are heavy-tailed early on


class HardwareMeter:
    """Seconds the instruments spent busy (measuring, reconfiguring) since `start()`."""

    def __init__(self):
        self.busy_s = 0.0
        self.started = time.perf_counter()

    def start(self) -> None:
        self.busy_s, self.started = 0.0, time.perf_counter()

    @contextlib.contextmanager
    def busy(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.busy_s += time.perf_counter() - t

    def idle_fraction(self) -> float:
        elapsed = time.perf_counter() - self.started
        return max(0.0, 1.0 - self.busy_s / elapsed) if elapsed > 0 else 0.0


class Agent:
    """Epsilon-greedy actions from the deployed units. `deploy(i, state)` loads a learner
    snapshot into unit i's model and deploys it (the instrument's reconfiguration)."""

    def __init__(self, units, encoder, n_actions: int, seed: int, deploy=None):
        self.units, self.encoder, self.n_actions, self.seed = units, encoder, n_actions, int(seed)
        self.meter = HardwareMeter()
        self._deploy = deploy or (lambda index, unit: unit.deploy())
        self.deployments = 0

    def calibrate(self, observations: np.ndarray) -> None:
        """Fix each unit's input and feature scaling on a batch of observations (the units
        freeze them at their first measurement) instead of on the first single state."""
        h = self.encoder(observations)
        for unit in self.units:
            with self.meter.busy():
                u = unit.prepare(h)
            with torch.no_grad():
                h = unit.model()(torch.from_numpy(u)).numpy()

    def deploy(self, index: int, state: dict | None = None) -> None:
        unit = self.units[index]
        if state is not None:
            unit.model().load_state_dict(state)
        with self.meter.busy():
            self._deploy(index, unit)
        self.deployments += 1

    def measure(self, obs: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """(each unit's measured model input, Q-values) for one observation."""
        h = self.encoder(obs)
        features = []
        for unit in self.units:
            with self.meter.busy():
                u = unit.prepare(h)
            features.append(u[0])
            with torch.no_grad():
                h = unit.model()(torch.from_numpy(u)).numpy()
        return features, h[0]

    def act(self, q: np.ndarray, epsilon: float, step: int) -> int:
        rng = np.random.default_rng([self.seed, int(step)])
        if rng.random() < epsilon:
            return int(rng.integers(self.n_actions))
        return int(np.argmax(q))


class Learner:
    """Trains copies of the units' models, each on its own objective (no gradient crosses
    units) at its own learning rate (lrs), on replay minibatch `step` (drawn by (seed, step));
    thread-safe snapshots."""

    def __init__(self, models: list[nn.Module], objectives: list[PIBTDObjective], replay: ReplayBuffer,
                 batch_size: int, lrs: list[float], seed: int):
        self.models = [copy.deepcopy(m) for m in models]
        self.objectives, self.replay, self.batch_size, self.seed = objectives, replay, batch_size, seed
        self.optimisers = [torch.optim.Adam(list(m.parameters()) + list(o.parameters()), lr=lr)
                           for m, o, lr in zip(self.models, objectives, lrs)]
        self.steps = 0
        self.lock = threading.Lock()
        self.last: list[dict[str, float]] = [{} for _ in models]

    def step(self) -> list[dict[str, float]]:
        """One optimisation step of every unit on the same minibatch."""
        with self.lock:
            batches = self.replay.batches(self.steps, self.batch_size)  # no torch RNG used past this
            for i, (model, objective, opt, batch) in enumerate(zip(self.models, self.objectives, self.optimisers,
                                                                    batches)):
                loss, values = objective.loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], _GRAD_CLIP)
                opt.step()
                self.last[i] = {"loss": loss.item(), **values}
            self.steps += 1
            return self.last

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
            self.steps = int(state["steps"])
            for m, o, obj, ms, os_, objs in zip(self.models, self.optimisers, self.objectives,
                                                 state["models"], state["optimisers"], state["objectives"]):
                m.load_state_dict(ms)
                o.load_state_dict(os_)
                obj.load_state(objs, m)
