"""The replay instrument: a recorded run's crossbar measurements served through the
CrossbarArray protocol, as bench entry `driver: replay`, `resource: RUN.h5`.

It neither drives hardware nor simulates physics: `program_weights(w)` finds the recorded
deployment whose weights are `w` (a unit's trained parameters at one revision, clipped as
the unit deploys them) and returns its recorded read-back; `matmul(x)` finds the rows of `x`
among the inputs that deployment was measured on (the dataset for unit 0, else the previous
unit's recorded features at the revision that fed it) and returns what was measured for
them. Weights or inputs without a recording are refused with an error that says what the
recording holds. The unit applies its activation after matmul(), so matmul() returns a
pre-activation whose activation is the recorded feature (the feature itself for relu and
none, its inverse for tanh and sigmoid).

Its data is what the recorded run measured: the run file's provenance marks the instrument
as replay (with the file it replays) and as simulated when the recorded instrument was.
Uses (docs/characterise.md): retrain downstream units or the readout offline on a recorded
run, and regression tests driven by recordings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from labpnn import data
from labpnn.errors import ConfigError, DeviceError
from labpnn.instruments.base import Instrument
from labpnn.protocols import Health
from labpnn.recipe import Recipe, parse_recipe
from labpnn.runlog import SPLITS, RunReader

SPEC_KEYS = ("kind", "out", "activation", "bias", "clip")  # what a replayed unit's recording depends on
_EDGE = 1e-7  # tanh and sigmoid outputs are kept this far inside their range before inverting


def _preimage(activation: str, f: np.ndarray) -> np.ndarray:
    if activation == "tanh":
        return np.arctanh(np.clip(f, -1 + _EDGE, 1 - _EDGE))
    if activation == "sigmoid":
        f = np.clip(f, _EDGE, 1 - _EDGE)
        return np.log(f / (1 - f))
    return f  # relu (idempotent) and none


@dataclass
class Recording:
    """One recorded deployment: unit, revision, the matrix programmed, its read-back, and the
    inputs (train then test rows) with the pre-activations measured for them (NaN: not measured)."""

    unit: int
    revision: int
    matrix: np.ndarray
    readback: dict[str, np.ndarray]
    inputs: np.ndarray
    outputs: np.ndarray
    fed_by: str
    served: bool = False
    _index: dict[int, list[int]] | None = None

    def index(self) -> dict[int, list[int]]:
        if self._index is None:
            self._index = {}
            for k, row in enumerate(self.inputs):
                self._index.setdefault(hash(row.tobytes()), []).append(k)
        return self._index


def _close(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return a.shape == b.shape and float(np.max(np.abs(a - b), initial=0)) <= tol * max(float(np.max(np.abs(b), initial=0)), 1e-30)


class ReplayCrossbar(Instrument):
    """Serves the crossbar measurements of the run file `resource` (see the module docstring)."""

    simulated = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        instrument: str | None = Field(None, description="the recorded run's instrument to serve "
                                       "(default: this bench entry's name)")
        tolerance: float = Field(1e-5, gt=0, description="how close (relative to the largest magnitude) "
                                 "weights and inputs must be to a recording")

    def __init__(self, name: str = "crossbar", resource: str | None = None, **options: Any):
        super().__init__(name, resource, **options)
        self.replay_of = str(resource)
        self.array_shape = (0, 0)
        self.deployment_id = 0
        self._recipe: Recipe | None = None
        self._recorded: dict[str, Any] = {}
        self._recordings: list[Recording] = []
        self._current: Recording | None = None

    @classmethod
    def check_resource(cls, resource: str | None) -> None:
        if not resource:
            raise ValueError("a replay needs 'resource: RUN.h5', the run file whose measurements it serves")

    @property
    def source(self) -> str:
        """The recorded run's instrument this replay serves."""
        return self.options.instrument or self.name

    # ---------------------------------------------------------------- Device

    @property
    def connected(self) -> bool:
        return self._recipe is not None

    def connect(self) -> None:
        with self._lock:
            if self.connected:
                return
            with RunReader(self.resource) as reader:
                recipe = parse_recipe(reader.recipe, f"recipe stored in {self.resource}")
                units = [i for i, u in enumerate(recipe.units) if self.source in u.instruments]
                if not units:
                    used = sorted({n for u in recipe.units for n in u.instruments})
                    raise DeviceError(f"{self.resource} (recipe {recipe.name!r}) recorded no unit on instrument "
                                      f"{self.source!r}; its units use {', '.join(used)} (set the replay's "
                                      "option 'instrument')", self.name)
                other = [f"{i} ({recipe.units[i].kind})" for i in units if recipe.units[i].kind != "crossbar"]
                if other:
                    raise DeviceError(f"{self.resource}: unit(s) {', '.join(other)} on {self.source!r} are not "
                                      "crossbar units; a replay serves crossbar units (a scattering unit's "
                                      "recorded features follow its digital layer, not the projection)", self.name)
                self._recorded = reader.bench.get(self.source, {})
                self.simulated = bool(reader.provenance.get("simulated", {}).get(self.source, False))
                self._recordings = self._read(reader, recipe, units)
            self.array_shape = tuple(self._recorded.get("array_shape", (0, 0)))
            self._recipe = recipe

    def _read(self, reader: RunReader, recipe: Recipe, units: list[int]) -> list[Recording]:
        from labpnn.units.crossbar import CrossbarUnit

        order = reader.checkpoints  # append-only: in the order they happened
        dataset = None
        recordings = []
        for i in units:
            spec, layout, view = recipe.units[i], reader.layout.units[i], reader.unit(i)
            for rev in view.param_revisions("deployed"):
                if (i, rev, "deployed") not in order or view.params("trained", rev) is None:
                    continue
                unit = CrossbarUnit(f"replay{i}", self, layout.in_features, layout.out_features,
                                    activation=spec.activation, bias=spec.bias, clip=spec.clip)
                unit.model().load_state_dict({k: torch.as_tensor(v) for k, v in view.params("trained", rev).items()})
                if i == 0:
                    if dataset is None:
                        d = recipe.dataset
                        dataset = data.load(d.name, **d.load_options())
                    inputs, fed_by = np.vstack([dataset.x_train, dataset.x_test]), f"dataset {recipe.dataset.name}"
                else:
                    deployed_at = order.index((i, rev, "deployed"))
                    measured = [r for u, r, p in order[:deployed_at] if u == i - 1 and p == "measured"]
                    if not measured:
                        continue
                    before = reader.unit(i - 1)
                    inputs = np.vstack([before.features(s, measured[-1]) for s in SPLITS])
                    fed_by = f"unit {i - 1} revision {measured[-1]}"
                outputs = np.vstack([view.features(s, rev) for s in SPLITS])
                recordings.append(Recording(i, rev, unit.deployment_matrix(), view.params("deployed", rev),
                                            np.ascontiguousarray(inputs, np.float32),
                                            _preimage(spec.activation, outputs).astype(np.float32), fed_by))
        return recordings

    def close(self) -> None:
        with self._lock:
            self._recipe, self._recordings, self._current = None, [], None

    def identity(self) -> str:
        return f"REPLAY of {self._recorded.get('identity', self.source)} from {self.resource}"

    def reset(self) -> None:
        with self._lock:
            self._current = None
            self.deployment_id += 1

    def safe_state(self) -> None:
        """Nothing to switch off: a replay drives no hardware."""

    def self_test(self) -> Health:
        self._require()
        return Health(True, 0, f"replay of {self.resource}: {len(self._recordings)} recorded deployments")

    def snapshot(self) -> dict[str, Any]:
        snap = {"name": self.name, "resource": self.resource, "simulated": self.simulated, "replay": True,
                "replay_of": self.replay_of, "options": self.options.model_dump(mode="json")}
        if self.connected:
            snap.update(identity=self.identity(), recorded=self._recorded, array_shape=list(self.array_shape),
                        g_range=self._recorded.get("g_range"))
        return snap

    def check_recipe(self, recipe: Recipe) -> None:
        """Refuse a recipe whose units on this replay (or before them) or dataset differ from the
        recording in what the measurements depend on; pib, readout and seeds may differ (weights
        that then differ are refused when programmed)."""
        self._require()
        recorded, mine = self._recipe, recipe
        served = [i for i, u in enumerate(mine.units) if self.name in u.instruments]
        diffs = [f"dataset.{k}: {getattr(mine.dataset, k)!r} (recorded {getattr(recorded.dataset, k)!r})"
                 for k in type(mine.dataset).model_fields if getattr(mine.dataset, k) != getattr(recorded.dataset, k)]
        for i in range(max(served, default=-1) + 1):
            if i >= len(recorded.units):
                diffs.append(f"units.{i}: not in the recording ({len(recorded.units)} units)")
                continue
            a, b = mine.units[i], recorded.units[i]
            diffs += [f"units.{i}.{k}: {getattr(a, k)!r} (recorded {getattr(b, k)!r})"
                      for k in SPEC_KEYS if getattr(a, k) != getattr(b, k)]
            if i in served and self.source not in b.instruments:
                diffs.append(f"units.{i}: recorded on {b.instruments}, not on {self.source!r}")
        if diffs:
            raise ConfigError(f"replay {self.name!r} of {self.resource} (recipe {recorded.name!r}) has no recording "
                              f"for recipe {mine.name!r}: it differs in {'; '.join(diffs)}")

    # ---------------------------------------------------------------- CrossbarArray

    def program_weights(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        w = np.asarray(weights, np.float32)
        with self._lock:
            self._require()
            tol = self.options.tolerance
            found = [r for r in self._recordings if _close(w, r.matrix, tol)]
            if not found:
                raise DeviceError(self._no_deployment(w), self.name)
            rec = next((r for r in found if not r.served), found[-1])  # a matrix deployed again: its next revision
            rec.served = True
            self._current = rec
            self.deployment_id += 1
            return {k: v.copy() for k, v in rec.readback.items()}

    def _no_deployment(self, w: np.ndarray) -> str:
        same = [r for r in self._recordings if r.matrix.shape == w.shape]
        held = ", ".join(f"unit {r.unit} revision {r.revision} {r.matrix.shape}" for r in self._recordings)
        if not same:
            return (f"no recording for a {w.shape} weight matrix: {self.resource} recorded on {self.source!r} "
                    f"{held}; is this the recorded recipe ({self._recipe.name!r})?")
        gap = min(float(np.max(np.abs(w - r.matrix)) / max(np.max(np.abs(r.matrix)), 1e-30)) for r in same)
        return (f"no recording for these {w.shape} weights: the nearest recorded deployment ({held}) differs by "
                f"{100 * gap:.3g} % of its largest weight (tolerance {100 * self.options.tolerance:g} %); the "
                "training differs from the recorded run (its recipe, seeds, inputs or the code)")

    def read_weights(self) -> dict[str, np.ndarray]:
        with self._lock:
            return {k: v.copy() for k, v in self._deployed().readback.items()}

    def conductance_range(self) -> tuple[float, float]:
        """(g_min, g_max) of the recorded board, siemens."""
        lo, hi = self._recorded.get("g_range") or (0.0, 0.0)
        return float(lo), float(hi)

    def matmul(self, x: np.ndarray, format: str = "float32") -> np.ndarray:
        """The recorded outputs for x (they travelled in whatever `format` the run used)."""
        x = np.asarray(x, np.float32)
        with self._lock:
            rec = self._deployed()
            spec = self._recipe.units[rec.unit]
            if x.ndim != 2 or x.shape[1] != rec.matrix.shape[0]:
                raise ValueError(f"{self.name}: x of shape {x.shape}; the programmed weights take "
                                 f"{rec.matrix.shape[0]} features")
            if spec.bias:
                if not np.all(x[:, -1] == 1):
                    raise DeviceError("no recording for these inputs: the bias row is not driven by 1", self.name)
                x = x[:, :-1]
            rows = self._locate(rec, x)
            out = rec.outputs[rows]
            if np.isnan(out).any():
                k = int(np.flatnonzero(np.isnan(out).any(axis=1))[0])
                raise DeviceError(f"unit {rec.unit} revision {rec.revision}: input row {k} was never measured in "
                                  f"{self.resource} (the run stopped before it)", self.name)
            return out

    def _locate(self, rec: Recording, x: np.ndarray) -> np.ndarray:
        """The recorded row of every row of x: a contiguous block if there is one (the engine
        measures in order; duplicate inputs resolve by position), else row by row."""
        tol, index, n = self.options.tolerance, rec.index(), len(x)
        for start in index.get(hash(x[0].tobytes()), []):
            if start + n <= len(rec.inputs) and _close(x, rec.inputs[start:start + n], tol):
                return np.arange(start, start + n)
        rows = np.empty(n, int)
        scale = max(float(np.max(np.abs(rec.inputs), initial=0)), 1e-30)
        for k, row in enumerate(x):
            hit = next((j for j in index.get(hash(row.tobytes()), []) if np.array_equal(rec.inputs[j], row)), None)
            if hit is None:
                gap = np.max(np.abs(rec.inputs - row), axis=1)
                j = int(np.argmin(gap))
                if gap[j] > tol * scale:
                    raise DeviceError(f"no recording for input row {k} of this batch: unit {rec.unit} revision "
                                      f"{rec.revision} was measured in {self.resource} on {rec.fed_by}, and the "
                                      f"nearest recorded input differs by {gap[j]:.3g} (another dataset, or "
                                      "upstream units that changed?)", self.name)
                hit = j
            rows[k] = hit
        return rows

    # ---------------------------------------------------------------- internals

    def _require(self) -> None:
        if not self.connected:
            raise DeviceError("not connected; call connect() first", self.name)

    def _deployed(self) -> Recording:
        self._require()
        if self._current is None:
            raise DeviceError("no weights programmed; call program_weights() first", self.name)
        return self._current

