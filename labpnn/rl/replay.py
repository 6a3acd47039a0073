"""A seeded replay buffer of transitions as the hardware measured them.

Each transition holds, per unit kept (the first `len(feature_dims)`: a learner that measures
the later units' inputs again needs only the first's), the unit's model input (its measured
optical features, float16) for the state and for the next state, plus the scaled observation
(the PIB term's X), the action, the rewards of the steps up to the next state (`n_step` at
most: an n-step transition, zero-padded), their count, and whether the episode terminated.
Minibatch s is drawn by (seed, s) alone, and the whole buffer is a dict of arrays
(state()/load()), so a checkpoint holding it makes a resumed run continue the same trajectory.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from labpnn.protocols import Batch

_SCALARS = {"action": np.int64, "steps": np.int64, "done": np.float32}


class ReplayBuffer:
    """Ring buffer of `capacity` transitions; thread-safe (the actor adds, the learner samples)."""

    def __init__(self, capacity: int, obs_dim: int, feature_dims: list[int], seed: int, n_step: int = 1):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity, self.seed = int(capacity), int(seed)
        self.arrays: dict[str, np.ndarray] = {"obs": np.zeros((capacity, obs_dim), np.float32),
                                              "reward": np.zeros((capacity, n_step), np.float32)}
        for name, dtype in _SCALARS.items():
            self.arrays[name] = np.zeros(capacity, dtype)
        self.n_units = len(feature_dims)
        for unit, dim in enumerate(feature_dims):
            self.arrays[f"h{unit}"] = np.zeros((capacity, dim), np.float16)
            self.arrays[f"h{unit}_next"] = np.zeros((capacity, dim), np.float16)
        self.added = 0  # transitions ever added; the newest sits at (added - 1) % capacity
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(self, obs, action: int, rewards: list[float], done: bool, h: list[np.ndarray],
            h_next: list[np.ndarray]) -> None:
        """One transition: `rewards` those of the steps from the state to the next state."""
        with self._lock:
            i = self.added % self.capacity
            a = self.arrays
            a["obs"][i], a["action"][i], a["done"][i], a["steps"][i] = obs, action, done, len(rewards)
            a["reward"][i] = 0.0
            a["reward"][i, :len(rewards)] = rewards
            for unit in range(self.n_units):
                a[f"h{unit}"][i], a[f"h{unit}_next"][i] = h[unit], h_next[unit]
            self.added += 1

    def sample(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """Minibatch `step`: batch_size transitions drawn with replacement, by (seed, step) only."""
        with self._lock:
            n = len(self)
            if n == 0:
                raise ValueError("replay buffer is empty")
            idx = np.random.default_rng([self.seed, int(step)]).integers(0, n, batch_size)
            return {k: (v[idx].astype(np.float32) if v.dtype == np.float16 else v[idx])
                    for k, v in self.arrays.items()}

    def batches(self, step: int, batch_size: int) -> list[Batch]:
        """Minibatch `step` as one Batch per unit kept: x the scaled observations, h the unit's
        inputs, targets action, reward (batch, n_step), steps, done and h_next (the unit's inputs
        at the next state)."""
        s = {k: torch.from_numpy(v) for k, v in self.sample(step, batch_size).items()}
        common = {k: s[k] for k in ("action", "reward", "steps", "done")}
        return [Batch(s["obs"], s[f"h{i}"], {**common, "h_next": s[f"h{i}_next"]}) for i in range(self.n_units)]

    def state(self) -> dict:
        """The filled part of the buffer (tensors, in storage order) and the count added."""
        with self._lock:
            n = len(self)
            return {**{k: torch.from_numpy(v[:n].copy()) for k, v in self.arrays.items()}, "added": self.added}

    def load(self, state: dict) -> None:
        """Restore a state() checkpoint taken from a buffer of the same shape."""
        with self._lock:
            added = int(state["added"])
            n = min(added, self.capacity)
            for k, v in self.arrays.items():
                if k not in state or tuple(state[k].shape) != (n, *v.shape[1:]):
                    raise ValueError(f"replay checkpoint: {k!r} missing or of the wrong shape")
                v[:n] = np.asarray(state[k])
            self.added = added
