"""The layout of a run file: format constants, record dtypes, `UnitLayout`/`RunLayout`,
the HDF5 paths a layout requires and how its datasets are chunked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from labpnn.errors import RunLogError
from labpnn.run_state import STATES  # noqa: F401  (re-exported: the states a file may record)

PHASES = ("optimised", "deployed", "measured")  # checkpoint names, per unit and revision

FORMAT = "labpnn-run"            # root attribute `labpnn_format`: marks a labpnn run file
FORMAT_VERSION = 1               # root attribute `format_version`
# HDF5 file-format bounds: the 1.10 format is the oldest that has SWMR, and capping it there
# keeps the files readable by every HDF5 1.10+ reader (Debian's h5ls 1.10, h5py on 1.12/1.14,
# h5wasm); "latest" under HDF5 2.0 writes datatype messages those cannot decode
LIBVER = ("v110", "v110")
SPLITS = ("train", "test")
PARAM_KINDS = ("trained", "deployed")
ACCURACY_KINDS = ("probe", "readout", "verify", "linear")

MESSAGE_BYTES = 512              # events/message: fixed-length UTF-8, truncated with "…"
REASON_BYTES = 1024              # state/reason
ELLIPSIS = "\u2026"


def utf8(n: int) -> np.dtype:
    """Fixed-length n-byte strings declared UTF-8 in the file (plain `S<n>` is ASCII to HDF5)."""
    return h5py.string_dtype("utf-8", n)


INFO_DTYPE = np.dtype([("revision", "<i4"), ("step", "<i8"), ("loss", "<f8"),
                       ("I_XZ", "<f8"), ("I_YZ", "<f8"), ("time", "<f8")])
EVENT_DTYPE = np.dtype([("time", "<f8"), ("kind", utf8(12)), ("unit", "<i4"),
                        ("message", utf8(MESSAGE_BYTES))])
STATE_DTYPE = np.dtype([("time", "<f8"), ("state", utf8(12)), ("reason", utf8(REASON_BYTES))])
ACCURACY_DTYPE = np.dtype([("time", "<f8"), ("unit", "<i4"), ("revision", "<i4"),
                           ("split", utf8(8)), ("what", utf8(8)), ("value", "<f8")])
CHECKPOINT_DTYPE = np.dtype([("time", "<f8"), ("unit", "<i4"), ("revision", "<i4"),
                             ("phase", utf8(12))])
COMMIT_DTYPE = np.dtype([("time", "<f8"), ("revision", "<i4"), ("kind", utf8(12))])
WRITER_DTYPE = np.dtype([("time", "<f8"), ("action", utf8(8)), ("pid", "<i8"),
                         ("started", "<f8"), ("host", utf8(64))])
RAGGED_INDEX_DTYPE = np.dtype([("offset", "<i8"), ("length", "<i8")])


def episode_dtype(n_units: int) -> np.dtype:
    """A row of the `episodes` table (RL runs): `losses` is each unit's mean loss over the
    optimisation steps taken during the episode (NaN before learning starts)."""
    return np.dtype([("episode", "<i8"), ("return", "<f8"), ("length", "<i8"), ("epsilon", "<f8"),
                     ("env_steps", "<i8"), ("learner_steps", "<i8"), ("average", "<f8"),
                     ("time", "<f8"), ("losses", "<f8", (max(1, int(n_units)),))])

# meta/committed: each growing table's row count as of the writer's last completed flush.
# A SWMR reader can see a table's new extent before the rows' bytes (HDF5 writes metadata
# and raw data in separate steps), so readers trust rows only up to this count; the writer
# updates it after every flush, then flushes again. Files written before it have none.
COMMITTED = "meta/committed"


def committed_tables(n_units: int) -> list[str]:
    """The tables meta/committed counts, in its order: every table a reader reads row by row
    (index tables govern the arrays and blobs they point into)."""
    names = ["state", "events", "accuracies", "checkpoints", "writers", "episodes",
             "faults/json", "faults/index", "sites/json", "sites/index",
             "analyses/json", "analyses/index", "readout/commits"]
    for i in range(n_units):
        names += [f"units/{i}/info_plane", f"units/{i}/params/commits", f"units/{i}/features/rows"]
    return names


_TABLE_CHUNK_BYTES = 16 * 1024
_ARRAY_CHUNK_BYTES = 1024 * 1024
_FEATURE_CHUNK_ROWS = 256
_SLOT_CHUNK = 16 * 1024
_COPY_SLAB_BYTES = 16 * 1024 * 1024


# --------------------------------------------------------------------------- layout

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
    # {"trained/<name>" | "deployed/<name>": {attribute: text}}: units, axes (DescribesArrays)
    array_attrs: dict[str, dict[str, str]] = field(default_factory=dict)

    def shapes(self, kind: str) -> dict[str, tuple[int, ...]]:
        """The shapes of the 'trained' or 'deployed' arrays."""
        return self.param_shapes if kind == "trained" else self.deployed_shapes

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "in_features": int(self.in_features),
                "out_features": int(self.out_features),
                "param_shapes": {k: [int(n) for n in v] for k, v in self.param_shapes.items()},
                "deployed_shapes": {k: [int(n) for n in v]
                                    for k, v in self.deployed_shapes.items()},
                "steps": int(self.steps),
                "array_attrs": {k: {str(a): str(t) for a, t in v.items()}
                                for k, v in self.array_attrs.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnitLayout:
        return cls(name=str(d["name"]), kind=str(d["kind"]), in_features=int(d["in_features"]),
                   out_features=int(d["out_features"]),
                   param_shapes={str(k): tuple(int(n) for n in v)
                                 for k, v in d["param_shapes"].items()},
                   deployed_shapes={str(k): tuple(int(n) for n in v)
                                    for k, v in d["deployed_shapes"].items()},
                   steps=int(d["steps"]),
                   array_attrs={str(k): {str(a): str(t) for a, t in v.items()}
                                for k, v in d.get("array_attrs", {}).items()})


@dataclass
class RunLayout:
    units: list[UnitLayout]
    n_train: int
    n_test: int
    n_classes: int
    readout_param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def n_rows(self, split: str) -> int:
        return self.n_train if split == "train" else self.n_test

    def to_dict(self) -> dict[str, Any]:
        return {"units": [u.to_dict() for u in self.units], "n_train": int(self.n_train),
                "n_test": int(self.n_test), "n_classes": int(self.n_classes),
                "readout_param_shapes": {k: [int(n) for n in v]
                                         for k, v in self.readout_param_shapes.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunLayout:
        return cls(units=[UnitLayout.from_dict(u) for u in d["units"]],
                   n_train=int(d["n_train"]), n_test=int(d["n_test"]),
                   n_classes=int(d["n_classes"]),
                   readout_param_shapes={str(k): tuple(int(n) for n in v)
                                         for k, v in d.get("readout_param_shapes", {}).items()})


def _check_layout(layout: RunLayout) -> None:
    """Refuse a layout the file cannot hold, with a message naming the culprit."""
    if not isinstance(layout, RunLayout):
        raise RunLogError(f"run layout must be a RunLayout, not {type(layout).__name__}")

    def shapes_ok(where: str, shapes: Mapping[str, Any]) -> None:
        for name, shape in shapes.items():
            if not isinstance(name, str) or name in ("", ".", ".."):
                raise RunLogError(f"run layout: {where}: invalid array name {name!r}")
            try:
                dims = tuple(int(n) for n in shape)
            except TypeError:
                raise RunLogError(f"run layout: {where}/{name}: shape {shape!r} is not a "
                                  "tuple of ints") from None
            if any(n < 0 for n in dims):
                raise RunLogError(f"run layout: {where}/{name}: negative size in {dims}")

    for n, what in ((layout.n_train, "n_train"), (layout.n_test, "n_test"),
                    (layout.n_classes, "n_classes")):
        if int(n) < 0:
            raise RunLogError(f"run layout: {what} = {n} is negative")
    for i, u in enumerate(layout.units):
        if int(u.in_features) < 0 or int(u.out_features) < 0:
            raise RunLogError(f"run layout: unit {i} ({u.name}): negative feature count")
        shapes_ok(f"unit {i} ({u.name}) params", u.param_shapes)
        shapes_ok(f"unit {i} ({u.name}) deployed", u.deployed_shapes)
    shapes_ok("readout", layout.readout_param_shapes)


# --------------------------------------------------------------------------- helpers

def _key(name: str) -> str:
    """An array name as an HDF5 link name ('/' is the path separator)."""
    return name.replace("%", "%25").replace("/", "%2F")


def _table_chunk(dtype: np.dtype) -> tuple[int]:
    return (max(16, _TABLE_CHUNK_BYTES // max(1, dtype.itemsize)),)


def _array_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk (1, *shape) along a leading revision axis, shrunk to about 1 MB."""
    dims = [max(1, n) for n in shape]
    i = 0
    while int(np.prod(dims)) * itemsize > _ARRAY_CHUNK_BYTES and i < len(dims):
        if dims[i] > 1:
            dims[i] = (dims[i] + 1) // 2
        else:
            i += 1
    return (1, *dims)


def _required_paths(layout: RunLayout) -> list[str]:
    paths = ["meta/recipe", "meta/bench", "meta/provenance", "state", "events", "accuracies",
             "checkpoints", "faults/json", "faults/index", "writers", "readout/commits"]
    paths += [f"readout/params/{_key(n)}" for n in layout.readout_param_shapes]
    for i, u in enumerate(layout.units):
        g = f"units/{i}"
        paths += [f"{g}/info_plane", f"{g}/optimiser/slot0", f"{g}/optimiser/slot1",
                  f"{g}/optimiser/pointer", f"{g}/params/commits", f"{g}/features/train",
                  f"{g}/features/test", f"{g}/features/rows"]
        paths += [f"{g}/params/trained/{_key(n)}" for n in u.param_shapes]
        paths += [f"{g}/params/deployed/{_key(n)}" for n in u.deployed_shapes]
    return paths
