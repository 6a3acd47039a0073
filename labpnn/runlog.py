"""The HDF5 run log: one file per run, written live (SWMR) and readable after a crash.

CONTRACT STUB: the signatures below are what the engine, CLI and GUI call; the
implementation fills them in. Layout documented in docs/runlog.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labpnn.events import Event

PHASES = ("optimised", "deployed", "measured")  # checkpoint names, per unit and revision


@dataclass
class UnitLayout:
    """What the run log pre-allocates for one unit (SWMR forbids creating objects later)."""

    name: str
    kind: str
    in_features: int
    out_features: int
    param_shapes: dict[str, tuple[int, ...]]      # the model's state_dict
    deployed_shapes: dict[str, tuple[int, ...]]   # unit.deployed_shapes()
    steps: int                                    # planned PIB steps (a size hint)


@dataclass
class RunLayout:
    units: list[UnitLayout]
    n_train: int
    n_test: int
    n_classes: int
    readout_param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


class RunLog:
    """Writer, used from the engine's thread only. Every method flushes before returning."""

    path: Path
    layout: RunLayout

    @classmethod
    def create(cls, path: str | Path, layout: RunLayout, *, recipe: dict[str, Any],
               bench: dict[str, Any], provenance: dict[str, Any]) -> RunLog:
        """A new run file (refuses to overwrite an existing one), SWMR on."""
        raise NotImplementedError

    @classmethod
    def resume(cls, path: str | Path) -> RunLog:
        """Reopen a killed, aborted or failed run for writing, keeping everything it holds.
        Optimisation rows past the last saved optimiser state are dropped."""
        raise NotImplementedError

    # -- what the run is
    @property
    def recipe(self) -> dict[str, Any]: raise NotImplementedError

    def set_state(self, state: str, reason: str = "") -> None: raise NotImplementedError

    def event(self, ev: Event) -> None:
        """Append to the events table (time, kind, unit, message)."""
        raise NotImplementedError

    # -- optimisation of a unit (revision r: 0 first time, +1 per retraining after a fault)
    def step(self, unit: int, revision: int, step: int, *, loss: float, i_xz: float,
             i_yz: float, state: bytes) -> None:
        """One PIB step: an info-plane row and the optimiser state after it (for resume)."""
        raise NotImplementedError

    def live_state(self, unit: int, revision: int) -> tuple[int, bytes] | None:
        """(last completed step, optimiser state) of a unit's optimisation, or None."""
        raise NotImplementedError

    # -- arrays per unit and revision
    def params(self, unit: int, revision: int, kind: str, arrays: dict[str, np.ndarray]) -> None:
        """kind: 'trained' (the model's state_dict) or 'deployed' (read back from hardware)."""
        raise NotImplementedError

    def features(self, unit: int, revision: int, split: str, start: int, array: np.ndarray) -> None:
        """Measured outputs rows [start, start+len) of split 'train' or 'test'."""
        raise NotImplementedError

    def readout(self, arrays: dict[str, np.ndarray], revision: int) -> None: raise NotImplementedError

    def accuracy(self, unit: int | None, revision: int, split: str, value: float, what: str) -> None:
        """unit None: the final readout; what: 'probe' or 'readout'."""
        raise NotImplementedError

    def fault(self, record: dict[str, Any]) -> None:
        """One entry of the fault section (kind, unit, channels, accuracies, detail)."""
        raise NotImplementedError

    def checkpoint(self, unit: int, revision: int, phase: str) -> None:
        """Mark a phase of a unit (one of PHASES) complete."""
        raise NotImplementedError

    def checkpoints(self) -> list[tuple[int, int, str]]: raise NotImplementedError

    def close(self) -> None: raise NotImplementedError


class RunReader:
    """Reader (SWMR), safe while a writer is live; refresh() picks up new rows."""

    def __init__(self, path: str | Path): raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """What `labpnn inspect --json` prints."""
        raise NotImplementedError
