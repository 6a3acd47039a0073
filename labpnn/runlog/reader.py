"""The reader: `RunReader` (SWMR, safe while a writer is live) and `UnitView`, one unit
of a run as the reader sees it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from labpnn.errors import RunLogError
from labpnn.runlog.fault_accuracy import complete
from labpnn.runlog.h5io import (
    _READ_ERRORS, _check_format, _check_not_truncated, _damaged, _is_checksum_error,
    _jsonable, _open_run_file, _read_everything, _read_json_dataset, _text, _tolerant_read,
)
from labpnn.runlog.layout import (
    COMMITTED, INFO_DTYPE, PARAM_KINDS, SPLITS, RunLayout, UnitLayout, _key,
)
from labpnn.runlog.repair import _writer_alive
from labpnn.runlog.writer import _OPEN_LOCK, _OPEN_WRITERS

# --------------------------------------------------------------------------- reader

class UnitView:
    """One unit of a run as the reader sees it (arrays are read on demand)."""

    def __init__(self, reader: RunReader, index: int):
        self._r = reader
        self.index = index
        self.layout: UnitLayout = reader.layout.units[index]

    def _g(self) -> h5py.Group:
        return self._r._file()[f"units/{self.index}"]

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def kind(self) -> str:
        return self.layout.kind

    @property
    def info_plane(self) -> np.ndarray:
        """Structured array: revision, step, loss, I_XZ (bits), I_YZ (bits), time."""
        return np.asarray(self._r._table(f"units/{self.index}/info_plane"), dtype=INFO_DTYPE)

    def _commits(self) -> np.ndarray:
        return self._r._table(f"units/{self.index}/params/commits")

    @property
    def revisions(self) -> int:
        """How many revisions of the unit have anything recorded."""
        with self._r._reading(f"unit {self.index}"):
            g = self._g()
            n = max(g["features/train"].shape[0], g["features/test"].shape[0])
        c = self._commits()
        if c.size:
            n = max(n, int(c["revision"].max()) + 1)
        info = self.info_plane
        if info.size:
            n = max(n, int(info["revision"].max()) + 1)
        return n

    def param_revisions(self, kind: str = "trained") -> list[int]:
        """The revisions whose `kind` params were written completely."""
        c = self._commits()
        return sorted({int(x["revision"]) for x in c if _text(x["kind"]) == kind})

    def params(self, kind: str = "trained", revision: int | None = None
               ) -> dict[str, np.ndarray] | None:
        """The 'trained' or 'deployed' arrays of a revision (default: the latest), or None."""
        if kind not in PARAM_KINDS:
            raise RunLogError(f"params kind {kind!r} is not one of {PARAM_KINDS}")
        revs = self.param_revisions(kind)
        if revision is None:
            if not revs:
                return None
            revision = revs[-1]
        elif int(revision) not in revs:
            return None
        g = f"units/{self.index}/params/{kind}"
        return {n: self._r._read(f"{g}/{_key(n)}", int(revision))
                for n in self.layout.shapes(kind)}

    @property
    def trained(self) -> dict[str, np.ndarray] | None:
        return self.params("trained")

    @property
    def deployed(self) -> dict[str, np.ndarray] | None:
        return self.params("deployed")

    def feature_rows(self, split: str, revision: int | None = None) -> int:
        """Rows of `split` written so far in a revision (default: the latest)."""
        rows = self._r._table(f"units/{self.index}/features/rows")
        n = rows.shape[0]
        if not n:
            return 0
        r = n - 1 if revision is None else int(revision)
        return int(rows[r, SPLITS.index(split)]) if 0 <= r < n else 0

    def features(self, split: str, revision: int | None = None) -> np.ndarray | None:
        """Measured outputs (n, out_features) of a revision (default: the latest);
        rows not measured yet are NaN. None if that revision has none."""
        if split not in SPLITS:
            raise RunLogError(f"split {split!r} is not one of {SPLITS}")
        name = f"units/{self.index}/features/{split}"
        with self._r._reading(name):
            n = self._r._file()[name].shape[0]
        r = n - 1 if revision is None else int(revision)
        if not 0 <= r < n:
            return None
        return self._r._read(name, r)

    @property
    def live_state(self) -> tuple[int, int, bytes] | None:
        """(revision, step, optimiser state) last saved, or None."""
        with self._r._reading(f"the optimiser state of unit {self.index}"):
            g = self._g()["optimiser"]
            rev, step, slot, nbytes = (int(v) for v in g["pointer"][...])
            if slot not in (0, 1):
                return None
            data = g[f"slot{slot}"][:nbytes] if nbytes else np.zeros(0, np.uint8)
            return rev, step, np.asarray(data, dtype=np.uint8).tobytes()

    def checkpoints(self) -> list[tuple[int, str]]:
        return [(r, p) for u, r, p in self._r.checkpoints if u == self.index]


def _chunk_missing(ds: h5py.Dataset, row: int) -> bool:
    """Whether the chunk holding committed `row` of a table is absent from this reader's
    chunk index. An SWMR reader refreshing while the writer adds a chunk can be left (HDF5
    2.0 of h5py 3.16, seen under load) without the new chunk in its index, reading the first
    chunk's rows in its place, until the file is opened again: no refresh clears it."""
    if ds.chunks is None or ds.ndim != 1 or row < ds.chunks[0]:
        return False
    origin = row // ds.chunks[0] * ds.chunks[0]
    return ds.id.get_chunk_info_by_coord((origin,)).byte_offset is None


class RunReader:
    """Reader (SWMR), safe while a writer is live; refresh() picks up new rows."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f: h5py.File | None = None
        self.damaged: dict[str, str] = {}   # chunks read despite a failed checksum
        self._open()

    def _open(self) -> None:
        path = self.path
        f = _open_run_file(path)
        datasets: list[h5py.Dataset] = []
        try:
            with self._reading_file(path, "the file structure"):
                layout = _check_format(f, path)
            with self._reading_file(path, "the run metadata (meta/)"):
                self._meta = {k: _read_json_dataset(f[f"meta/{k}"])
                              for k in ("recipe", "bench", "provenance")}
                self._attrs = {"created": float(f.attrs.get("created", 0.0)),
                               "format_version": int(f.attrs["format_version"]),
                               "labpnn_version": _text(f.attrs.get("labpnn_version", ""))}
            with self._reading_file(path, "the file structure"):
                f.visititems(lambda _n, o: datasets.append(o)
                             if isinstance(o, h5py.Dataset) else None)
        except BaseException:
            f.close()
            raise
        try:
            self._inode = os.stat(path).st_ino
        except OSError:
            self._inode = None
        if self._f is not None:
            with contextlib.suppress(Exception):
                self._f.close()
        self._f = f
        self.layout: RunLayout = layout
        self._datasets = datasets
        self._caps: dict[str, int] = {}
        self._read_caps()

    def _read_caps(self) -> None:
        """The tables' committed row counts (meta/committed; none in older files). A read
        torn by the writer fails its checksum: try again; if it keeps failing (a writer
        killed mid-write), keep the counts read before."""
        f = self._file()
        if COMMITTED not in f:
            return
        with self._reading("the committed row counts (meta/committed)"):
            ds = f[COMMITTED]
            names = json.loads(_text(ds.attrs["tables"]))
            for _ in range(5):
                try:
                    ds.refresh()
                    self._caps = dict(zip(names, (int(n) for n in ds[...])))
                    return
                except OSError as exc:
                    if not _is_checksum_error(exc):
                        raise
                    time.sleep(0.005)

    # -- plumbing
    def _file(self) -> h5py.File:
        if self._f is None or not self._f.id.valid:
            raise RunLogError(f"{self.path}: the reader is closed")
        return self._f

    @staticmethod
    @contextlib.contextmanager
    def _reading_file(path: Path, what: str) -> Iterator[None]:
        try:
            yield
        except RunLogError:
            raise
        except _READ_ERRORS as exc:
            raise _damaged(path, what, exc) from exc

    def _reading(self, what: str) -> contextlib.AbstractContextManager[None]:
        return self._reading_file(self.path, what)

    def _table(self, name: str) -> np.ndarray:
        """A whole table. A live writer can be caught mid-chunk-write (a torn read fails
        its checksum): refresh and retry before calling the file damaged. Only the rows the
        writer committed (meta/committed): a live table's newest rows may not be on disk yet."""
        cap = self._caps.get(name)
        rows = self._read(name, Ellipsis if cap is None else slice(0, cap))
        if cap and _chunk_missing(self._file()[name], cap - 1):  # a stale chunk index: start afresh
            self.close()
            self._open()
            rows = self._read(name, slice(0, self._caps.get(name, cap)))
        return rows

    def _read(self, name: str, sel: Any) -> np.ndarray:
        """f[name][sel], retrying a torn read of a live file, then decoding a chunk that
        fails its checksum from its stored bytes (noted in `damaged`)."""
        for attempt in range(3):
            try:
                ds = self._file()[name]
                if attempt < 2:
                    return np.asarray(ds[sel])
                return np.asarray(_tolerant_read(ds, sel, self.damaged))
            except OSError as exc:
                if attempt == 2 or not _is_checksum_error(exc):
                    raise _damaged(self.path, name, exc) from exc
                time.sleep(0.005)
                with contextlib.suppress(Exception):
                    self._file()[name].refresh()
            except _READ_ERRORS as exc:
                raise _damaged(self.path, name, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def refresh(self) -> None:
        """See what the writer flushed since the last refresh (and reopen the file if a
        resume replaced it)."""
        try:
            ino = os.stat(self.path).st_ino
        except OSError:
            ino = self._inode
        if ino != self._inode:
            self._open()
            return
        self._read_caps()                   # first: every row it counts is on disk
        with self._reading("the file (refresh)"):
            for ds in self._datasets:
                ds.refresh()

    def close(self) -> None:
        if self._f is not None:
            with contextlib.suppress(Exception):
                self._f.close()
            self._f = None

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the run is
    @property
    def recipe(self) -> dict[str, Any]:
        return self._meta["recipe"]

    @property
    def bench(self) -> dict[str, Any]:
        return self._meta["bench"]

    @property
    def provenance(self) -> dict[str, Any]:
        return self._meta["provenance"]

    @property
    def format_version(self) -> int:
        return self._attrs["format_version"]

    @property
    def created(self) -> float:
        """When the file was created (seconds since the epoch)."""
        return self._attrs["created"]

    @property
    def state_history(self) -> list[dict[str, Any]]:
        """Every state set: {"time", "state", "reason"}, oldest first."""
        return [{"time": float(r["time"]), "state": _text(r["state"]),
                 "reason": _text(r["reason"])} for r in self._table("state")]

    @property
    def state(self) -> str:
        h = self._table("state")
        return _text(h[-1]["state"]) if h.size else "idle"

    @property
    def reason(self) -> str:
        h = self._table("state")
        return _text(h[-1]["reason"]) if h.size else ""

    @property
    def units(self) -> list[UnitView]:
        return [UnitView(self, i) for i in range(len(self.layout.units))]

    def unit(self, index: int) -> UnitView:
        if not 0 <= int(index) < len(self.layout.units):
            raise RunLogError(f"{self.path}: no unit {index} (the run has "
                              f"{len(self.layout.units)} units)")
        return UnitView(self, int(index))

    @property
    def events(self) -> list[dict[str, Any]]:
        """{"time", "kind", "unit" (None: not about one unit), "message"}, oldest first."""
        return [{"time": float(r["time"]), "kind": _text(r["kind"]),
                 "unit": None if int(r["unit"]) < 0 else int(r["unit"]),
                 "message": _text(r["message"])} for r in self._table("events")]

    @property
    def accuracies(self) -> list[dict[str, Any]]:
        """{"time", "unit" (None: the final readout), "revision", "split", "what", "value"}."""
        return [{"time": float(r["time"]), "unit": None if int(r["unit"]) < 0 else int(r["unit"]),
                 "revision": int(r["revision"]), "split": _text(r["split"]),
                 "what": _text(r["what"]),
                 "value": float(r["value"]) if math.isfinite(r["value"]) else None}
                for r in self._table("accuracies")]

    def _final_accuracy(self, split: str) -> float | None:
        for a in reversed(self.accuracies):
            if a["unit"] is None and a["split"] == split and a["what"] == "readout":
                return a["value"]
        return None

    @property
    def test_accuracy(self) -> float | None:
        """The last final readout's test accuracy (0..1), or None."""
        return self._final_accuracy("test")

    @property
    def train_accuracy(self) -> float | None:
        return self._final_accuracy("train")

    @property
    def episodes(self) -> list[dict[str, Any]]:
        """The RL episodes recorded (empty for supervised runs and older files)."""
        if "episodes" not in self._file():
            return []
        return [{"episode": int(r["episode"]), "return": float(r["return"]), "length": int(r["length"]),
                 "epsilon": float(r["epsilon"]), "env_steps": int(r["env_steps"]),
                 "learner_steps": int(r["learner_steps"]), "average": float(r["average"]),
                 "losses": [_jsonable(v) for v in r["losses"]], "time": float(r["time"])}
                for r in self._table("episodes")]

    @property
    def faults(self) -> list[dict[str, Any]]:
        """The fault records, each with the accuracies the run measured after it filled in
        where the record had none (fault_accuracy.complete)."""
        accuracies = self.accuracies
        return [complete(r, accuracies) for r in self._json_records("faults")]

    @property
    def site_records(self) -> list[dict[str, Any]]:
        """What each site did for each unit and revision (parallel runs; [] otherwise)."""
        return self._json_records("sites") if "sites" in self._file() else []

    @property
    def analyses(self) -> list[dict[str, Any]]:
        """Analyses of the finished run (RunLog.analysis: {test, setting, value, unit, ...})."""
        return self._json_records("analyses") if "analyses" in self._file() else []

    def _json_records(self, group: str) -> list[dict[str, Any]]:
        index = self._table(f"{group}/index")
        if not index.size:
            return []
        blob = self._table(f"{group}/json")
        out = []
        with self._reading(f"the records in {group}/"):
            for row in index:
                a, n = int(row["offset"]), int(row["length"])
                if a + n > blob.shape[0]:
                    break  # the index row is visible before its bytes: next refresh
                out.append(json.loads(blob[a: a + n].tobytes().decode("utf-8")))
        return out

    @property
    def checkpoints(self) -> list[tuple[int, int, str]]:
        return [(int(r["unit"]), int(r["revision"]), _text(r["phase"]))
                for r in self._table("checkpoints")]

    @property
    def writers(self) -> list[dict[str, Any]]:
        """Who opened the file for writing: {"time", "action" (create/resume/close), "pid",
        "started", "host"}."""
        return [{"time": float(r["time"]), "action": _text(r["action"]), "pid": int(r["pid"]),
                 "started": float(r["started"]), "host": _text(r["host"])}
                for r in self._table("writers")]

    @property
    def writer_alive(self) -> bool | None:
        """Whether the process writing the file is running (None: on another host)."""
        w = self.writers
        alive = _writer_alive(w[-1] if w else None)
        if alive is False and w and w[-1]["action"] != "close" and w[-1]["pid"] == os.getpid():
            with _OPEN_LOCK:
                alive = str(self.path.resolve()) in _OPEN_WRITERS
        return alive

    @property
    def readout_params(self) -> dict[str, np.ndarray] | None:
        """The latest committed readout parameters, or None."""
        c = self._table("readout/commits")
        if not c.size:
            return None
        r = int(c[-1]["revision"])
        return {n: self._read(f"readout/params/{_key(n)}", r)
                for n in self.layout.readout_param_shapes}

    def duration(self) -> float:
        """Seconds from creation to the last thing recorded."""
        last = self.created
        for name in ("state", "events", "accuracies", "checkpoints"):
            t = self._table(name)
            if t.size:
                last = max(last, float(t["time"].max()))
        for i in range(len(self.layout.units)):
            t = self._table(f"units/{i}/info_plane")
            if t.size:
                last = max(last, float(t["time"].max()))
        return max(0.0, last - self.created)

    def verify(self) -> None:
        """Read every byte of every dataset (checksums included); RunLogError if any is
        damaged."""
        _check_not_truncated(self.path)
        _read_everything(self._file(), self.path, self.layout)

    def summary(self) -> dict[str, Any]:
        """What `labpnn inspect --json` prints."""
        checkpoints = self.checkpoints
        records = self.site_records
        where = {r["unit"]: r for r in records if r.get("unit") is not None}  # the last per unit
        units = []
        for u in self.units:
            info = u.info_plane
            rows = [{"revision": int(r["revision"]), "step": int(r["step"]),
                     "loss": _jsonable(r["loss"]), "I_XZ": _jsonable(r["I_XZ"]),
                     "I_YZ": _jsonable(r["I_YZ"]), "time": float(r["time"])} for r in info]
            units.append({
                "index": u.index, "name": u.name, "kind": u.kind,
                "in_features": u.layout.in_features, "out_features": u.layout.out_features,
                "steps_planned": u.layout.steps, "revisions": u.revisions,
                "steps": len(rows), "last": rows[-1] if rows else None, "info_plane": rows,
                "feature_rows": {s: u.feature_rows(s) for s in SPLITS},
                "checkpoints": [{"revision": r, "phase": p}
                                for un, r, p in checkpoints if un == u.index],
                "site": where.get(u.index, {}).get("site"), "host": where.get(u.index, {}).get("host"),
            })
        accuracies = self.accuracies
        test = self.test_accuracy
        return _jsonable({
            "file": str(self.path),
            "format_version": self.format_version,
            "labpnn_version": self._attrs["labpnn_version"],
            "recipe": self.recipe,
            "state": self.state,
            "reason": self.reason,
            "created": self.created,
            "duration_s": self.duration(),
            "writer_alive": self.writer_alive,
            "resumes": sum(1 for w in self.writers if w["action"] == "resume"),
            "units": units,
            "test_accuracy": test,
            "train_accuracy": self.train_accuracy,
            "probe_accuracy": next((a["value"] for a in reversed(accuracies) if a["what"] == "linear"
                                    and a["split"] == "test"), None),
            "accuracies": accuracies,
            "checkpoints": [{"unit": None if u < 0 else u, "revision": r, "phase": p}
                            for u, r, p in checkpoints],
            "episodes": [{k: e[k] for k in ("episode", "return", "length")} for e in self.episodes],
            "events": self.events,
            "faults": self.faults,
            "sites": _per_site([r for r in records if r.get("what") != "costs"]),
            "costs": [r for r in records if r.get("what") == "costs"],
            "site_records": records,
            "analyses": self.analyses,
            "provenance": self.provenance,
            "bench": self.bench,
            "damaged": list(self.damaged.values()),
        })


def _per_site(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Site records summed per site: host, address, units, seconds busy, payload bytes each way."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        site = out.setdefault(r["site"], {"host": None, "address": None, "units": [], "busy_s": 0.0,
                                          "bytes_sent": 0, "bytes_received": 0})
        site["host"], site["address"] = r.get("host"), r.get("address")
        if r.get("unit") is not None and r["unit"] not in site["units"]:
            site["units"].append(r["unit"])
        for key in ("busy_s", "bytes_sent", "bytes_received"):
            site[key] += r.get(key, 0)
    return out
