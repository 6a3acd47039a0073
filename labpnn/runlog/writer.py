"""The writer: `RunLog` (the engine's thread only), and `_build`, which creates every
group, dataset and attribute of a new run file."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from labpnn.errors import RunLogError
from labpnn.events import Event
from labpnn.runlog.h5io import (
    _append, _can_clear_flags, _check_format, _damaged, _dumps, _fixed, _open_error,
    _open_in_place, _open_run_file, _process_started, _read_everything, _read_json_dataset,
    _row, _superblock_eof, _text,
)
from labpnn.runlog.layout import (
    _ARRAY_CHUNK_BYTES, _FEATURE_CHUNK_ROWS, _SLOT_CHUNK, ACCURACY_DTYPE, ACCURACY_KINDS,
    CHECKPOINT_DTYPE, COMMIT_DTYPE, COMMITTED, EVENT_DTYPE, FORMAT, FORMAT_VERSION, INFO_DTYPE, LIBVER,
    MESSAGE_BYTES, PARAM_KINDS, PHASES, RAGGED_INDEX_DTYPE, REASON_BYTES, SPLITS, STATE_DTYPE,
    STATES, WRITER_DTYPE, RunLayout, utf8, _array_chunks, _check_layout, _key, _table_chunk,
    committed_tables, episode_dtype,
)
from labpnn.runlog.repair import (
    _drop_uncommitted_rows, _drop_unsaved_steps, _refuse_finished, _refuse_live_writer, _refuse_protected,
    _repair_by_copy, _resume_lock,
)

_OPEN_WRITERS: set[str] = set()   # resolved paths this process holds open for writing
_OPEN_LOCK = threading.Lock()


# --------------------------------------------------------------------------- file layout

def _build(f: h5py.File, layout: RunLayout, *, recipe: Any, bench: Any,
           provenance: Any) -> None:
    """Create every group, dataset and attribute of a run file (before SWMR is on)."""
    from labpnn import __version__

    now = time.time()
    f.attrs["labpnn_format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["labpnn_version"] = str(__version__)
    f.attrs["created"] = now

    def table(where: h5py.Group, name: str, dtype: np.dtype) -> h5py.Dataset:
        return where.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                    chunks=_table_chunk(dtype), fletcher32=True)

    def arrays(where: h5py.Group, shapes: Mapping[str, tuple[int, ...]],
               described: Mapping[str, Mapping[str, str]] | None = None) -> None:
        for name, shape in shapes.items():
            shape = tuple(int(n) for n in shape)
            maxshape = (None, *(None if n == 0 else n for n in shape))
            ds = where.create_dataset(_key(name), shape=(0, *shape), maxshape=maxshape,
                                      dtype="<f8", chunks=_array_chunks(shape, 8),
                                      fletcher32=True, fillvalue=np.nan)
            ds.attrs["name"] = name
            ds.attrs["axes"] = "revision, *shape"
            for attr, text in (described or {}).get(name, {}).items():
                ds.attrs[attr] = text

    meta = f.create_group("meta")
    for name, value in (("recipe", recipe), ("bench", bench), ("provenance", provenance),
                        ("layout", layout.to_dict())):
        raw = _dumps(value)
        ds = meta.create_dataset(name, shape=(1,), dtype=utf8(max(1, len(raw))),
                                 chunks=(1,), fletcher32=True)
        ds[0] = np.bytes_(raw)
        ds.attrs["encoding"] = "JSON, UTF-8"

    st = table(f, "state", STATE_DTYPE)
    st.resize((1,))
    st[0] = _row(STATE_DTYPE, time=now, state=b"idle", reason=b"")
    table(f, "events", EVENT_DTYPE).attrs["unit"] = "-1: not about one unit"
    table(f, "accuracies", ACCURACY_DTYPE).attrs["unit"] = "-1: the final readout"
    table(f, "checkpoints", CHECKPOINT_DTYPE)
    table(f, "writers", WRITER_DTYPE)
    table(f, "episodes", episode_dtype(len(layout.units))).attrs["units"] = (
        "return: reward summed over the episode; average: over the last `window` episodes; "
        "time: seconds since the epoch")
    # ragged JSON records: fault reports; work done at each site; analyses of the finished run
    for name in ("faults", "sites", "analyses"):
        g = f.create_group(name)
        g.create_dataset("json", shape=(0,), maxshape=(None,), dtype="u1",
                         chunks=(4096,), fletcher32=True).attrs["encoding"] = "JSON, UTF-8"
        table(g, "index", RAGGED_INDEX_DTYPE)

    ro = f.create_group("readout")
    arrays(ro.create_group("params"), layout.readout_param_shapes)
    table(ro, "commits", COMMIT_DTYPE)

    units = f.create_group("units")
    for i, u in enumerate(layout.units):
        g = units.create_group(str(i))
        for k, v in u.to_dict().items():
            if not isinstance(v, dict):
                g.attrs[k] = v
        info = table(g, "info_plane", INFO_DTYPE)
        info.attrs["units"] = "I_XZ, I_YZ: bits; time: seconds since the epoch"
        opt = g.create_group("optimiser")
        for s in ("slot0", "slot1"):
            opt.create_dataset(s, shape=(0,), maxshape=(None,), dtype="u1",
                               chunks=(_SLOT_CHUNK,), fletcher32=True)
        ptr = opt.create_dataset("pointer", shape=(4,), dtype="<i8")
        ptr[...] = np.array([-1, -1, -1, 0], dtype="<i8")
        ptr.attrs["columns"] = "revision, step, slot, nbytes"
        p = g.create_group("params")
        for kind in PARAM_KINDS:
            arrays(p.create_group(kind), u.shapes(kind),
                   {k.split("/", 1)[1]: v for k, v in u.array_attrs.items()
                    if k.startswith(f"{kind}/")})
        table(p, "commits", COMMIT_DTYPE)
        fe = g.create_group("features")
        out = int(u.out_features)
        for split in SPLITS:
            n = layout.n_rows(split)
            rows = max(1, min(_FEATURE_CHUNK_ROWS, n,
                              _ARRAY_CHUNK_BYTES * 4 // max(1, out * 4)))
            ds = fe.create_dataset(split, shape=(0, n, out),
                                   maxshape=(None, n if n else None, out if out else None),
                                   dtype="<f4", chunks=(1, rows, max(1, out)),
                                   fletcher32=True, fillvalue=np.nan)
            ds.attrs["axes"] = "revision, sample, output"
        rows = fe.create_dataset("rows", shape=(0, 2), maxshape=(None, 2), dtype="<i8",
                                 chunks=(256, 2), fletcher32=True)
        rows.attrs["columns"] = "train, test: rows written (high-water mark) per revision"

    names = committed_tables(len(layout.units))
    done = f.create_dataset(COMMITTED, data=np.zeros(len(names), dtype="<i8"),
                            chunks=(len(names),), fletcher32=True)
    done.attrs["tables"] = _dumps(names)
    done.attrs["meaning"] = ("rows of each table (attribute `tables`, JSON) as of the writer's "
                             "last completed flush; rows past it may not be on disk yet")


# --------------------------------------------------------------------------- writer

def _open_resumable(path: Path, patience_s: float = 5.0) -> h5py.File | None:
    """The checked run file opened for writing in place, or None when it cannot be: a
    reader in this process has it open (HDF5 shares one handle per process), or a killed
    writer's flags are set and no libhdf5 call is at hand to clear them. Without that call,
    a reader in another process holding the file's lock for a moment (a poll, a GUI
    refresh) is waited out for up to patience_s."""
    if _can_clear_flags():
        try:
            return _open_in_place(path)
        except Exception as exc:
            if "already open for read-only" in str(exc).lower():
                return None
            raise _open_error(path, exc) from exc
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return h5py.File(path, "r+", libver=LIBVER)
        except OSError as exc:
            if "unable to lock file" in str(exc).lower() and time.monotonic() < deadline:
                time.sleep(0.05)
            elif "already open" in str(exc).lower():
                return None
            else:
                raise _open_error(path, exc) from exc


def _clear_spare_slots(f: h5py.File, layout: RunLayout) -> None:
    """Empty each unit's spare optimiser slot (scratch, which a kill mid-write may have left
    failing its checksum: the next step writes it afresh)."""
    for i in range(len(layout.units)):
        slot = int(f[f"units/{i}/optimiser/pointer"][2])
        for k in (0, 1):
            if k != slot:
                f[f"units/{i}/optimiser/slot{k}"].resize((0,))


def _writes(method: Any) -> Any:
    """A writer method: whatever h5py or NumPy raise becomes a RunLogError naming the file."""
    import functools

    @functools.wraps(method)
    def wrapper(self: RunLog, *args: Any, **kwargs: Any) -> Any:
        try:
            with self._lock:  # a scheme's threads may record at once (the parallel scheme)
                return method(self, *args, **kwargs)
        except RunLogError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise RunLogError(f"{self.path}: cannot record {method.__name__}(): "
                              f"{type(exc).__name__}: {exc}") from exc
    return wrapper


class RunLog:
    """Writer, used from the engine's threads (one lock serialises the recording methods).
    Every method flushes before returning."""

    path: Path
    layout: RunLayout

    def __init__(self, f: h5py.File, path: Path, layout: RunLayout):
        """Use create() or resume(); this binds an open, SWMR-writing file."""
        self._f = f
        self.path = path
        self.layout = layout
        self._closed = False
        self._lock = threading.RLock()
        self._recipe = _read_json_dataset(f["meta/recipe"])
        self._state = _text(f["state"][-1]["state"]) if len(f["state"]) else "idle"
        self._tables = {n: f[n] for n in ("state", "events", "accuracies", "checkpoints",
                                          "writers")}
        self._fault_json = f["faults/json"]
        self._fault_index = f["faults/index"]
        self._sites = (f["sites/json"], f["sites/index"]) if "sites" in f else None  # older files: none
        self._analyses = (f["analyses/json"], f["analyses/index"]) if "analyses" in f else None
        self._annotating = False
        self._readout = {n: f[f"readout/params/{_key(n)}"] for n in layout.readout_param_shapes}
        self._readout_commits = f["readout/commits"]
        self._units = []
        for i, u in enumerate(layout.units):
            g = f[f"units/{i}"]
            self._units.append({
                "info": g["info_plane"],
                "slots": (g["optimiser/slot0"], g["optimiser/slot1"]),
                "pointer": g["optimiser/pointer"],
                "ptr": np.asarray(g["optimiser/pointer"][...], dtype="<i8").copy(),
                "trained": {n: g[f"params/trained/{_key(n)}"] for n in u.param_shapes},
                "deployed": {n: g[f"params/deployed/{_key(n)}"] for n in u.deployed_shapes},
                "commits": g["params/commits"],
                "train": g["features/train"],
                "test": g["features/test"],
                "rows": g["features/rows"],
            })
        self._episodes = f["episodes"] if "episodes" in f else None  # older files have none
        self._row_counts = f[COMMITTED] if COMMITTED in f else None     # older files have none
        self._counted = ([f[n] for n in json.loads(_text(self._row_counts.attrs["tables"]))]
                         if self._row_counts is not None else [])
        self._checkpoints = [(int(r["unit"]), int(r["revision"]), _text(r["phase"]))
                             for r in f["checkpoints"][...]]

    # -- opening
    @classmethod
    def create(cls, path: str | Path, layout: RunLayout, *, recipe: dict[str, Any],
               bench: dict[str, Any], provenance: dict[str, Any]) -> RunLog:
        """A new run file (refuses to overwrite an existing one), SWMR on."""
        path = Path(path)
        _check_layout(layout)
        if path.exists() or path.is_symlink():
            raise RunLogError(f"{path}: a file already exists there; a run file is never "
                              "overwritten (choose another name, or resume it)")
        if not path.parent.is_dir():
            raise RunLogError(f"{path}: the folder {path.parent} does not exist")
        try:
            # "x": fail if the file appeared meanwhile (no race with another run)
            f = h5py.File(path, "x", libver=LIBVER)
        except FileExistsError as exc:
            raise RunLogError(f"{path}: a file already exists there; a run file is never "
                              "overwritten") from exc
        except OSError as exc:
            raise RunLogError(f"{path}: cannot create the run file ({exc})") from exc
        try:
            _build(f, layout, recipe=recipe, bench=bench, provenance=provenance)
            return cls._bind(f, path, layout, "create")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                f.close()
            with contextlib.suppress(OSError):
                path.unlink()
            with _OPEN_LOCK:
                _OPEN_WRITERS.discard(str(path.resolve()))
            if isinstance(exc, RunLogError):
                raise
            if isinstance(exc, Exception):
                raise RunLogError(f"{path}: cannot create the run file ({exc})") from exc
            raise

    @classmethod
    def _bind(cls, f: h5py.File, path: Path, layout: RunLayout, action: str) -> RunLog:
        """Switch f to SWMR, register it as this process's writer of path and record the
        writer's `action` (create, resume)."""
        f.flush()
        if not f.swmr_mode:
            f.swmr_mode = True
        key = str(path.resolve())
        with _OPEN_LOCK:
            if key in _OPEN_WRITERS:
                raise RunLogError(f"{path}: already open for writing in this process")
            _OPEN_WRITERS.add(key)
        try:
            log = cls(f, path, layout)
            log._writer_row(action)
            return log
        except BaseException:
            with _OPEN_LOCK:
                _OPEN_WRITERS.discard(key)
            raise

    @classmethod
    def resume(cls, path: str | Path) -> RunLog:
        """Reopen an aborted, failed or killed run for writing, keeping everything it holds.
        Optimisation rows past the last saved optimiser state are dropped.

        Nothing is written before the whole file was read back (every attribute and chunk,
        checksums checked): a damaged, finished, protected or still-written run is refused
        and the file left byte for byte as it was. Then the file is resumed in place (the
        "open for write" flags a killed writer leaves are cleared, as `h5clear -s` does), so
        readers keep following it. Only a file with a chunk torn by a kill mid-write, or
        with bytes past the end its superblock records, is copied into a fresh file that
        atomically replaces it (the copy heals the chunk).
        """
        path = Path(path)
        key = str(path.resolve())
        with _OPEN_LOCK:
            if key in _OPEN_WRITERS:
                raise RunLogError(f"{path}: still open for writing in this process; close it "
                                  "before resuming")
        with _resume_lock(path):
            src = _open_run_file(path)
            torn: dict[str, str] = {}
            try:
                layout = _check_format(src, path)
                _refuse_live_writer(src, path)
                _refuse_finished(src, path)
                _read_everything(src, path, layout, torn)
            finally:
                src.close()
            _refuse_protected(path)
            f = None
            ends = _superblock_eof(path)
            if not torn and (ends is None or ends[0] == ends[1]):
                f = _open_resumable(path)
            if f is None:
                _repair_by_copy(path, layout)
                f = _open_resumable(path)
            if f is None:
                raise RunLogError(f"{path}: cannot be reopened for writing after the copy")
            try:
                f.swmr_mode = True               # before any change: readers may be watching
                _drop_uncommitted_rows(f)
                _drop_unsaved_steps(f, layout)
                _clear_spare_slots(f, layout)
                return cls._bind(f, path, layout, "resume")
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    f.close()
                if isinstance(exc, RunLogError) or not isinstance(exc, Exception):
                    raise
                raise RunLogError(f"{path}: cannot resume the run ({exc})") from exc

    @classmethod
    def annotate(cls, path: str | Path) -> RunLog:
        """Reopen a finished run for analysis records only (`analysis()`: tests run on the
        deployed network after the run, e.g. labpnn.generalise), in place. Refused, leaving the
        file as it was: a run not finished, still written, damaged or protected."""
        path = Path(path)
        with _resume_lock(path):
            src = _open_run_file(path)
            try:
                layout = _check_format(src, path)
                _refuse_live_writer(src, path)
                if "analyses" not in src:
                    raise RunLogError(f"{path}: this run file predates analysis records "
                                      "(format without analyses/)")
                last = _text(src["state"][-1]["state"]) if len(src["state"]) else "idle"
                if last != "done":
                    raise RunLogError(f"{path}: the run is not finished (state {last}): resume "
                                      "it instead of annotating it")
                _read_everything(src, path, layout, None)
            finally:
                src.close()
            _refuse_protected(path)
            f = _open_resumable(path)
            if f is None:
                raise RunLogError(f"{path}: cannot be opened for writing in place")
            try:
                f.swmr_mode = True
                log = cls._bind(f, path, layout, "annotate")
            except BaseException:
                with contextlib.suppress(Exception):
                    f.close()
                raise
        log._annotating = True
        return log

    @_writes
    def analysis(self, record: dict[str, Any]) -> None:
        """One analysis of the run (a dict with at least 'test', e.g. labpnn.generalise's
        {test, setting, value, unit}); also on a run reopened with annotate()."""
        self._live(annotation=True)
        if self._analyses is None:
            raise RunLogError(f"{self.path}: this run file predates analysis records (format without analyses/)")
        if not isinstance(record, Mapping) or "test" not in record:
            raise RunLogError(f"{self.path}: an analysis record is a dict with at least 'test'")
        self._append_json(*self._analyses, {"time": time.time(), **record})

    # -- plumbing
    def _live(self, annotation: bool = False) -> h5py.File:
        if self._closed:
            raise RunLogError(f"{self.path}: the run log is closed")
        if self._annotating and not annotation:
            raise RunLogError(f"{self.path}: opened with annotate(): only analysis records")
        return self._f

    def _flush(self) -> None:
        """Flush, then publish the tables' row counts (meta/committed) and flush again, so
        a reader that sees a count finds every row under it on disk."""
        try:
            self._f.flush()
            if self._row_counts is not None:
                self._row_counts[...] = [ds.shape[0] for ds in self._counted]
                self._f.flush()
        except OSError as exc:
            raise RunLogError(f"{self.path}: cannot write the run file ({exc})") from exc

    _append = staticmethod(_append)   # h5io._append: one row onto a resizable table

    def _unit(self, unit: int) -> dict[str, Any]:
        try:
            u = int(unit)
        except (TypeError, ValueError):
            raise RunLogError(f"{self.path}: unit {unit!r} is not an index") from None
        if not 0 <= u < len(self._units):
            raise RunLogError(f"{self.path}: no unit {unit} (the run has "
                              f"{len(self._units)} units)")
        return self._units[u]

    def _revision(self, revision: int) -> int:
        try:
            r = int(revision)
        except (TypeError, ValueError):
            raise RunLogError(f"{self.path}: revision {revision!r} is not an integer") from None
        if r < 0:
            raise RunLogError(f"{self.path}: revision {revision} is negative")
        return r

    def _writer_row(self, action: str) -> None:
        self._append(self._tables["writers"], _row(
            WRITER_DTYPE, time=time.time(), action=action.encode(), pid=os.getpid(),
            started=_process_started(), host=_fixed(socket.gethostname(), 64)))
        self._flush()

    # -- what the run is
    @property
    def recipe(self) -> dict[str, Any]:
        return self._recipe

    @property
    def state(self) -> str:
        """The last state set (one of STATES)."""
        return self._state

    @property
    def closed(self) -> bool:
        return self._closed

    @_writes
    def set_state(self, state: str, reason: str = "") -> None:
        state = str(getattr(state, "value", state))
        if state not in STATES:
            raise RunLogError(f"{self.path}: state {state!r} is not one of {STATES}")
        self._live()
        self._append(self._tables["state"], _row(
            STATE_DTYPE, time=time.time(), state=state.encode(),
            reason=_fixed(reason or "", REASON_BYTES)))
        self._state = state
        self._flush()

    @_writes
    def event(self, ev: Event) -> None:
        """Append to the events table (time, kind, unit, message)."""
        self._live()
        unit = -1 if ev.unit is None else int(ev.unit)
        self._append(self._tables["events"], _row(
            EVENT_DTYPE, time=float(ev.time), kind=_fixed(ev.kind, 12), unit=unit,
            message=_fixed(ev.message, MESSAGE_BYTES)))
        self._flush()

    # -- optimisation of a unit (revision r: 0 first time, +1 per retraining after a fault)
    @_writes
    def step(self, unit: int, revision: int, step: int, *, loss: float, i_xz: float,
             i_yz: float, state: bytes) -> None:
        """One PIB step: an info-plane row and the optimiser state after it (for resume)."""
        self.steps(unit, revision, [(step, loss, i_xz, i_yz)], state)

    @_writes
    def steps(self, unit: int, revision: int, rows: list[tuple[int, float, float, float]],
              state: bytes) -> None:
        """Consecutive PIB steps (step, loss, I_XZ, I_YZ), e.g. a chunk trained at a site: their
        info-plane rows, then the optimiser state after the last one (for resume)."""
        self._live()
        u = self._unit(unit)
        r = self._revision(revision)
        if not rows:
            raise RunLogError(f"{self.path}: steps() of unit {unit} with no rows")
        data = np.frombuffer(bytes(state) if not isinstance(state, bytes) else state,
                             dtype=np.uint8)
        now = time.time()
        for s, loss, i_xz, i_yz in rows:
            self._append(u["info"], (r, int(s), float(loss), float(i_xz), float(i_yz), now))
        s = int(rows[-1][0])
        ptr = u["ptr"]
        slot = 0 if ptr[2] != 0 else 1            # never the slot the pointer names
        ds = u["slots"][slot]
        if ds.shape[0] < data.size:
            ds.resize((data.size,))
        if data.size:
            ds[: data.size] = data
        self._flush()                             # the rows and the state are on disk ...
        new = np.array([r, s, slot, data.size], dtype="<i8")
        u["pointer"][...] = new                   # ... before the pointer names them
        u["ptr"] = new
        self._flush()

    @_writes
    def episode(self, row: Mapping[str, Any]) -> None:
        """One finished RL episode: episode, return, length, epsilon, env_steps,
        learner_steps, average, losses (one per unit)."""
        self._live()
        if self._episodes is None:
            raise RunLogError(f"{self.path}: this run file predates episode records")
        dtype = self._episodes.dtype
        losses = np.full(dtype["losses"].shape, np.nan)
        losses[: len(row["losses"])] = row["losses"]
        self._append(self._episodes, _row(dtype, **{k: row[k] for k in dtype.names
                                                    if k not in ("time", "losses")},
                                          time=time.time(), losses=losses))
        self._flush()

    @_writes
    def live_state(self, unit: int, revision: int) -> tuple[int, bytes] | None:
        """(last completed step, optimiser state) of a unit's optimisation, or None."""
        self._live()
        u = self._unit(unit)
        r = self._revision(revision)
        rev, step, slot, nbytes = (int(v) for v in u["ptr"])
        if rev != r or slot not in (0, 1):
            return None
        try:
            data = u["slots"][slot][:nbytes] if nbytes else np.zeros(0, np.uint8)
        except OSError as exc:
            raise _damaged(self.path, f"the optimiser state of unit {unit}", exc) from exc
        return step, np.asarray(data, dtype=np.uint8).tobytes()

    # -- arrays per unit and revision
    def _check_arrays(self, where: str, shapes: Mapping[str, tuple[int, ...]],
                      arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(arrays, Mapping):
            raise RunLogError(f"{self.path}: {where}: expected a dict of arrays, "
                              f"got {type(arrays).__name__}")
        missing = sorted(set(shapes) - set(arrays))
        extra = sorted(set(arrays) - set(shapes))
        if missing or extra:
            raise RunLogError(f"{self.path}: {where}: the arrays do not match the run layout"
                              + (f"; missing {missing}" if missing else "")
                              + (f"; not in the layout {extra}" if extra else ""))
        out = {}
        for name, shape in shapes.items():
            a = arrays[name]
            try:
                a = np.asarray(a, dtype="<f8")
            except Exception:
                try:  # a torch tensor that requires grad
                    a = np.asarray(a.detach().cpu().numpy(), dtype="<f8")
                except Exception as exc:
                    raise RunLogError(f"{self.path}: {where}/{name}: not a numeric array "
                                      f"({exc})") from None
            if a.shape != tuple(shape):
                raise RunLogError(f"{self.path}: {where}/{name}: shape {a.shape} does not "
                                  f"match the run layout {tuple(shape)}")
            out[name] = a
        return out

    @staticmethod
    def _put_revision(ds: h5py.Dataset, r: int, a: np.ndarray) -> None:
        if r >= ds.shape[0]:
            ds.resize(r + 1, axis=0)   # append; a skipped revision stays NaN (never committed)
        ds[r] = a

    @_writes
    def params(self, unit: int, revision: int, kind: str, arrays: dict[str, np.ndarray]) -> None:
        """kind: 'trained' (the model's state_dict) or 'deployed' (read back from hardware)."""
        self._live()
        u = self._unit(unit)
        r = self._revision(revision)
        if kind not in PARAM_KINDS:
            raise RunLogError(f"{self.path}: params kind {kind!r} is not one of {PARAM_KINDS}")
        shapes = self.layout.units[int(unit)].shapes(kind)
        checked = self._check_arrays(f"unit {unit} {kind} params", shapes, arrays)
        for name, a in checked.items():
            self._put_revision(u[kind][name], r, a)
        # the commit row, after the arrays: a reader only trusts committed revisions
        self._append(u["commits"], _row(COMMIT_DTYPE, time=time.time(), revision=r,
                                        kind=kind.encode()))
        self._flush()

    @_writes
    def features(self, unit: int, revision: int, split: str, start: int, array: np.ndarray) -> None:
        """Measured outputs rows [start, start+len) of split 'train' or 'test'."""
        self._live()
        u = self._unit(unit)
        r = self._revision(revision)
        if split not in SPLITS:
            raise RunLogError(f"{self.path}: split {split!r} is not one of {SPLITS}")
        a = np.asarray(array, dtype="<f4")
        out = self.layout.units[int(unit)].out_features
        n = self.layout.n_rows(split)
        if a.ndim != 2 or a.shape[1] != out:
            raise RunLogError(f"{self.path}: unit {unit} {split} features: shape {a.shape} is "
                              f"not (rows, {out})")
        start = int(start)
        if start < 0 or start + a.shape[0] > n:
            raise RunLogError(f"{self.path}: unit {unit} {split} features: rows "
                              f"[{start}, {start + a.shape[0]}) outside [0, {n})")
        ds = u[split]
        if r >= ds.shape[0]:
            ds.resize(r + 1, axis=0)
        if a.shape[0]:
            ds[r, start: start + a.shape[0]] = a
        rows = u["rows"]
        if r >= rows.shape[0]:
            rows.resize(r + 1, axis=0)
        col = SPLITS.index(split)
        done = max(int(rows[r, col]), start + a.shape[0])
        rows[r, col] = done
        self._flush()

    @_writes
    def readout(self, arrays: dict[str, np.ndarray], revision: int) -> None:
        self._live()
        r = self._revision(revision)
        checked = self._check_arrays("readout params", self.layout.readout_param_shapes, arrays)
        for name, a in checked.items():
            self._put_revision(self._readout[name], r, a)
        self._append(self._readout_commits, _row(COMMIT_DTYPE, time=time.time(), revision=r,
                                                 kind=b"readout"))
        self._flush()

    @_writes
    def accuracy(self, unit: int | None, revision: int, split: str, value: float, what: str) -> None:
        """unit None: the final readout; what: 'probe' or 'readout'."""
        self._live()
        if unit is not None:
            self._unit(unit)
        r = self._revision(revision)
        if split not in SPLITS:
            raise RunLogError(f"{self.path}: split {split!r} is not one of {SPLITS}")
        if what not in ACCURACY_KINDS:
            raise RunLogError(f"{self.path}: accuracy kind {what!r} is not one of "
                              f"{ACCURACY_KINDS}")
        v = float("nan") if value is None else float(value)
        self._append(self._tables["accuracies"], _row(
            ACCURACY_DTYPE, time=time.time(), unit=-1 if unit is None else int(unit),
            revision=r, split=split.encode(), what=what.encode(), value=v))
        self._flush()

    @_writes
    def fault(self, record: dict[str, Any]) -> None:
        """One entry of the fault section (kind, unit, channels, accuracies, detail)."""
        self._live()
        if not isinstance(record, Mapping) or "kind" not in record:
            raise RunLogError(f"{self.path}: a fault record is a dict with at least 'kind'")
        rec: dict[str, Any] = {"kind": None, "unit": None, "channels": [],
                               "accuracy_before": None, "accuracy_after_fault": None,
                               "accuracy_recovered": None, "message": "", "time": time.time()}
        rec.update(record)
        self._append_json(self._fault_json, self._fault_index, rec)

    @_writes
    def site_record(self, record: dict[str, Any]) -> None:
        """What one site did for one unit and revision (site, host, address, seconds, bytes)."""
        self._live()
        if self._sites is None:
            raise RunLogError(f"{self.path}: this run file predates site records (format without sites/)")
        if not isinstance(record, Mapping) or "site" not in record:
            raise RunLogError(f"{self.path}: a site record is a dict with at least 'site'")
        self._append_json(*self._sites, {"time": time.time(), **record})

    def _append_json(self, blob: h5py.Dataset, index: h5py.Dataset, rec: dict[str, Any]) -> None:
        raw = np.frombuffer(_dumps(rec), dtype=np.uint8)
        end = int(index[-1]["offset"] + index[-1]["length"]) if index.shape[0] else 0
        if blob.shape[0] < end + raw.size:
            blob.resize((end + raw.size,))
        blob[end: end + raw.size] = raw
        self._flush()                      # the bytes first, then the index row naming them
        self._append(index, (end, raw.size))
        self._flush()

    @_writes
    def checkpoint(self, unit: int, revision: int, phase: str) -> None:
        """Mark a phase of a unit (one of PHASES) complete. Unit -1 (or None): the readout."""
        self._live()
        unit = -1 if unit is None else int(unit)
        if unit != -1:
            self._unit(unit)
        r = self._revision(revision)
        if phase not in PHASES:
            raise RunLogError(f"{self.path}: checkpoint phase {phase!r} is not one of {PHASES}")
        self._append(self._tables["checkpoints"], _row(
            CHECKPOINT_DTYPE, time=time.time(), unit=int(unit), revision=r,
            phase=phase.encode()))
        self._checkpoints.append((int(unit), r, phase))
        self._flush()

    def checkpoints(self) -> list[tuple[int, int, str]]:
        """Every (unit, revision, phase) marked, in the order they were marked."""
        return list(self._checkpoints)

    # -- reading back what this run recorded (the engine, when it resumes)
    @staticmethod
    def _committed(commits: h5py.Dataset, revision: int, kind: str) -> bool:
        rows = commits[...]
        return bool(np.any((rows["revision"] == revision) & (rows["kind"] == kind.encode())))

    @_writes
    def read_params(self, unit: int, revision: int, kind: str) -> dict[str, np.ndarray]:
        """The 'trained' or 'deployed' arrays of a revision, as written by params()."""
        self._live()
        u = self._unit(unit)
        r = self._revision(revision)
        if kind not in PARAM_KINDS:
            raise RunLogError(f"{self.path}: params kind {kind!r} is not one of {PARAM_KINDS}")
        if not self._committed(u["commits"], r, kind):
            raise RunLogError(f"{self.path}: unit {unit} has no {kind} params of revision {r}")
        return {name: np.asarray(ds[r]) for name, ds in u[kind].items()}

    @_writes
    def read_features(self, unit: int, revision: int, split: str) -> np.ndarray:
        """The measured outputs (n, out_features) float32 of a revision (NaN: not measured)."""
        self._live()
        u = self._unit(unit)
        r = self._revision(revision)
        if split not in SPLITS:
            raise RunLogError(f"{self.path}: split {split!r} is not one of {SPLITS}")
        ds = u[split]
        if r >= ds.shape[0]:
            raise RunLogError(f"{self.path}: unit {unit} has no {split} features of "
                              f"revision {r}")
        return np.asarray(ds[r])

    @_writes
    def read_readout(self, revision: int) -> dict[str, np.ndarray]:
        """The readout parameters of a revision, as written by readout()."""
        self._live()
        r = self._revision(revision)
        if not self._committed(self._readout_commits, r, "readout"):
            raise RunLogError(f"{self.path}: no readout parameters of revision {r}")
        return {name: np.asarray(ds[r]) for name, ds in self._readout.items()}

    def close(self) -> None:
        if self._closed:
            return
        try:
            with contextlib.suppress(Exception):
                self._writer_row("close")
            self._f.close()
        finally:
            self._closed = True
            with _OPEN_LOCK:
                _OPEN_WRITERS.discard(str(self.path.resolve()))

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
