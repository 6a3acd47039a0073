"""The HDF5 run log: one file per run, written live (SWMR) and readable after a crash.

`RunLog` is the writer (the engine's thread only), `RunReader` the reader (CLI, GUI,
anything watching a live run). The file layout, the string encodings and what
`RunLog.resume` does are documented in docs/runlog.md; the short version:

* The writer creates every group, dataset and attribute at `create()` from the
  `RunLayout`, then switches SWMR on. Afterwards only resizable datasets grow
  (append-only tables, and per-unit arrays with a leading revision axis). Nothing
  recorded is overwritten, except a revision that is redone after a resume.
* Every writer method flushes before it returns, so a run killed at any moment keeps
  every completed call. The optimiser state of a unit is double-buffered (two slots and
  a pointer written last, after a flush), so a kill mid-write leaves the last state whole.
* Strings are never variable-length (the HDF5 global heap is not SWMR-safe: a live
  reader fails with "actual len exceeds EOA"): table strings are fixed-length bytes,
  long messages truncated with an ellipsis; nested records (faults) are JSON in
  ragged uint8 storage; the recipe/bench/provenance/layout are fixed-length JSON.
* Every chunked dataset carries a Fletcher-32 checksum, so a damaged file fails
  loudly (RunLogError) instead of returning garbage. One exception: SIGKILL can cut a
  chunk write between pages, and the chunk then fails its checksum although the rows it
  already held are intact (same bytes before and after); readers decode such a chunk as
  stored and list it in `RunReader.damaged`, and `RunLog.resume` rewrites it.
* SWMR readers open with 26 metadata read attempts instead of HDF5's 100: with its
  exponential back-off the default turns one damaged block into minutes of sleeping.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from labpnn.errors import RunLogError
from labpnn.events import Event

PHASES = ("optimised", "deployed", "measured")  # checkpoint names, per unit and revision

FORMAT = "labpnn-run"            # root attribute `labpnn_format`: marks a labpnn run file
FORMAT_VERSION = 1               # root attribute `format_version`
STATES = ("idle", "running", "pausing", "paused", "aborting", "done", "failed")
SPLITS = ("train", "test")
PARAM_KINDS = ("trained", "deployed")
ACCURACY_KINDS = ("probe", "readout", "verify")

MESSAGE_BYTES = 512              # events/message: fixed-length UTF-8, truncated with "…"
REASON_BYTES = 1024              # state/reason
ELLIPSIS = "\u2026"

INFO_DTYPE = np.dtype([("revision", "<i4"), ("step", "<i8"), ("loss", "<f8"),
                       ("I_XZ", "<f8"), ("I_YZ", "<f8"), ("time", "<f8")])
EVENT_DTYPE = np.dtype([("time", "<f8"), ("kind", "S12"), ("unit", "<i4"),
                        ("message", f"S{MESSAGE_BYTES}")])
STATE_DTYPE = np.dtype([("time", "<f8"), ("state", "S12"), ("reason", f"S{REASON_BYTES}")])
ACCURACY_DTYPE = np.dtype([("time", "<f8"), ("unit", "<i4"), ("revision", "<i4"),
                           ("split", "S8"), ("what", "S8"), ("value", "<f8")])
CHECKPOINT_DTYPE = np.dtype([("time", "<f8"), ("unit", "<i4"), ("revision", "<i4"),
                             ("phase", "S12")])
COMMIT_DTYPE = np.dtype([("time", "<f8"), ("revision", "<i4"), ("kind", "S12")])
WRITER_DTYPE = np.dtype([("time", "<f8"), ("action", "S8"), ("pid", "<i8"),
                         ("started", "<f8"), ("host", "S64")])
RAGGED_INDEX_DTYPE = np.dtype([("offset", "<i8"), ("length", "<i8")])

_TABLE_CHUNK_BYTES = 16 * 1024
_ARRAY_CHUNK_BYTES = 1024 * 1024
_FEATURE_CHUNK_ROWS = 256
_SLOT_CHUNK = 16 * 1024
_COPY_SLAB_BYTES = 16 * 1024 * 1024

_OPEN_WRITERS: set[str] = set()   # resolved paths this process holds open for writing
_OPEN_LOCK = threading.Lock()


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

    def shapes(self, kind: str) -> dict[str, tuple[int, ...]]:
        """The shapes of the 'trained' or 'deployed' arrays."""
        return self.param_shapes if kind == "trained" else self.deployed_shapes

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "in_features": int(self.in_features),
                "out_features": int(self.out_features),
                "param_shapes": {k: [int(n) for n in v] for k, v in self.param_shapes.items()},
                "deployed_shapes": {k: [int(n) for n in v]
                                    for k, v in self.deployed_shapes.items()},
                "steps": int(self.steps)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnitLayout:
        return cls(name=str(d["name"]), kind=str(d["kind"]), in_features=int(d["in_features"]),
                   out_features=int(d["out_features"]),
                   param_shapes={str(k): tuple(int(n) for n in v)
                                 for k, v in d["param_shapes"].items()},
                   deployed_shapes={str(k): tuple(int(n) for n in v)
                                    for k, v in d["deployed_shapes"].items()},
                   steps=int(d["steps"]))


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


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: NumPy scalars/arrays unpacked, NaN/inf -> None, the rest str()."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return _jsonable(obj.value)
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", errors="replace")
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors and friends
        try:
            return _jsonable(obj.tolist())
        except Exception:
            pass
    return str(obj)


def _dumps(obj: Any) -> bytes:
    return json.dumps(_jsonable(obj), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _fixed(text: Any, nbytes: int) -> bytes:
    """UTF-8 bytes of at most `nbytes`, cut on a character boundary and ended by '…'."""
    raw = str(text).encode("utf-8")
    if len(raw) <= nbytes:
        return raw
    cut = raw[: nbytes - len(ELLIPSIS.encode())].decode("utf-8", errors="ignore")
    return (cut + ELLIPSIS).encode("utf-8")


def _text(raw: Any) -> str:
    if isinstance(raw, (bytes, np.bytes_)):
        return bytes(raw).decode("utf-8", errors="replace")
    return str(raw)


def _row(dtype: np.dtype, **values: Any) -> np.ndarray:
    row = np.zeros((), dtype=dtype)
    for k, v in values.items():
        row[k] = v
    return row


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


def _process_started(pid: int | None = None) -> float:
    try:
        import psutil
        return float(psutil.Process(pid).create_time())
    except Exception:
        return 0.0


def _pid_alive(pid: int, started: float) -> bool:
    """Whether process `pid` (started at `started`, 0 = unknown) is still running here."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        psutil = None
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return not started or abs(proc.create_time() - started) < 1.0
        except psutil.Error:
            return False
    try:  # pragma: no cover
        os.kill(pid, 0)
    except ProcessLookupError:  # pragma: no cover
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True  # pragma: no cover


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # some filesystems do not let a directory be opened: best effort
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


# SWMR readers re-read checksummed metadata that fails its checksum (it may be caught
# mid-write), sleeping with exponential back-off between attempts. HDF5's default of 100
# attempts turns one damaged block into minutes of sleeping; 26 attempts wait at most
# ~0.1 s in total, still far longer than any metadata write of a live writer.
_READ_ATTEMPTS = 26
_set_read_attempts: Any = None   # H5Pset_metadata_read_attempts of h5py's libhdf5, or False


def _find_read_attempts_setter() -> Any:
    """H5Pset_metadata_read_attempts from the libhdf5 h5py is linked to (h5py does not
    wrap it); False when that library cannot be found."""
    import ctypes
    import glob

    candidates: list[str] = []
    try:
        with open("/proc/self/maps") as fh:  # Linux: the library actually loaded
            for line in fh:
                name = line.rsplit("/", 1)[-1]
                if "/" in line and name.startswith("libhdf5") and "_hl" not in name:
                    candidates.append(line[line.index("/"):].strip())
    except OSError:
        pass
    here = os.path.dirname(h5py.__file__)
    for pattern in ("../h5py.libs/libhdf5*", ".dylibs/libhdf5*", "libhdf5*", "hdf5*.dll"):
        candidates += [c for c in sorted(glob.glob(os.path.join(here, pattern)))
                       if "_hl" not in os.path.basename(c)]
    for cand in dict.fromkeys(candidates):
        try:
            lib = ctypes.CDLL(cand)
            setter, getter = lib.H5Pset_metadata_read_attempts, lib.H5Pget_metadata_read_attempts
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
        getter.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_uint)]
        getter.restype = ctypes.c_int
        probe = h5py.h5p.create(h5py.h5p.FILE_ACCESS)   # same library as h5py's ids?
        got = ctypes.c_uint(0)
        if setter(probe.id, 7) >= 0 and getter(probe.id, ctypes.byref(got)) >= 0 \
                and got.value == 7:
            return setter
    return False


def _open_swmr_read(path: Path) -> h5py.File:
    """h5py.File(path, "r", swmr=True), with few metadata read attempts."""
    global _set_read_attempts
    if _set_read_attempts is None:
        try:
            _set_read_attempts = _find_read_attempts_setter()
        except Exception:
            _set_read_attempts = False
    if not _set_read_attempts:
        return h5py.File(path, "r", swmr=True)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    _set_read_attempts(fapl.id, _READ_ATTEMPTS)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ,
                        fapl=fapl)
    return h5py.File(fid)


def _superblock_eof(path: Path) -> tuple[int, int] | None:
    """(end-of-file address the superblock records, size on disk) for a version 2/3
    superblock (libver "latest"), or None when there is none to check."""
    sig = b"\x89HDF\r\n\x1a\n"
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        base = 0
        while base + 48 <= size:   # the superblock sits at 0, 512, 1024, 2048, ...
            fh.seek(base)
            head = fh.read(48)
            if head[:8] == sig:
                break
            base = 512 if base == 0 else base * 2
        else:
            return None
        if head[8] not in (2, 3):
            return None
        o = head[9]
        if o not in (4, 8) or len(head) < 12 + 4 * o:
            return None
        base_addr = int.from_bytes(head[12: 12 + o], "little")
        eof = int.from_bytes(head[12 + 2 * o: 12 + 3 * o], "little")
        return base_addr + eof, size


def _check_not_truncated(path: Path, tries: int = 5) -> None:
    """RunLogError if the file is shorter than its superblock says (a live writer can be
    caught between the two within one flush: look again before deciding)."""
    for attempt in range(tries):
        try:
            sb = _superblock_eof(path)
        except OSError:
            return  # h5py will say what is wrong with it
        if sb is None or sb[0] <= sb[1]:
            return
        if attempt < tries - 1:
            time.sleep(0.02)
    raise RunLogError(f"{path}: the file is truncated: {sb[1]} bytes on disk, the HDF5 "
                      f"superblock records {sb[0]}; it was cut short (copied or downloaded "
                      "incompletely?) and cannot be read reliably")


def _open_error(path: Path, exc: BaseException) -> RunLogError:
    """Turn what h5py raises on open into a sentence about the file."""
    msg = str(exc)
    low = msg.lower()
    if isinstance(exc, FileNotFoundError) or "no such file" in low:
        return RunLogError(f"{path}: no such run file")
    if isinstance(exc, IsADirectoryError) or "is a directory" in low:
        return RunLogError(f"{path}: is a directory, not a run file")
    if isinstance(exc, PermissionError) or "permission denied" in low:
        return RunLogError(f"{path}: permission denied")
    if "file signature not found" in low:
        return RunLogError(f"{path}: not an HDF5 file (no HDF5 signature); "
                           "is this really a labpnn run file?")
    if "already open for write" in low:
        return RunLogError(f"{path}: is open for writing without SWMR (a run being created "
                           f"right now, or whose writer died before SWMR was on) ({msg})")
    if "truncated file" in low or ("eof" in low and "eoa" in low):
        return RunLogError(f"{path}: the file is truncated ({msg}); it cannot be read")
    if "unable to lock file" in low:
        return RunLogError(f"{path}: locked by another program ({msg})")
    return RunLogError(f"{path}: cannot be opened as a run file: the file is damaged or "
                       f"not a labpnn run ({msg})")


def _damaged(path: Path, what: str, exc: BaseException) -> RunLogError:
    return RunLogError(f"{path}: cannot read {what}: the file is damaged or truncated "
                       f"({type(exc).__name__}: {exc})")


_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError,
                AttributeError, UnicodeDecodeError, json.JSONDecodeError)


def _is_checksum_error(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return "filter" in msg or "checksum" in msg


def _norm_selection(ds: h5py.Dataset, sel: Any) -> tuple[tuple[slice, ...], bool]:
    """A selection of ints/slices (step 1) as full slices; whether axis 0 was an int."""
    if sel is Ellipsis or sel == ():
        sel = ()
    elif not isinstance(sel, tuple):
        sel = (sel,)
    squeeze = bool(sel) and isinstance(sel[0], (int, np.integer))
    out = []
    for axis, n in enumerate(ds.shape):
        s = sel[axis] if axis < len(sel) else slice(None)
        if isinstance(s, (int, np.integer)):
            i = int(s) + (n if s < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {s} out of range for axis {axis} of {ds.name}")
            s = slice(i, i + 1)
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError("tolerant reads take slices with step 1")
        out.append(slice(start, max(start, stop)))
    return tuple(out), squeeze


def _tolerant_read(ds: h5py.Dataset, sel: Any = Ellipsis,
                   damaged: dict[str, str] | None = None) -> np.ndarray:
    """ds[sel]; a chunk failing its Fletcher-32 checksum is decoded from its stored bytes
    instead (and noted in `damaged`). A writer killed mid-write (SIGKILL can cut a write
    between pages) leaves a chunk of old and new pages whose checksum fails although the
    rows it had already flushed are intact: they are the same bytes in both versions."""
    try:
        return ds[sel]
    except OSError as exc:
        if damaged is None or ds.chunks is None or not _is_checksum_error(exc):
            raise
    import itertools

    full, squeeze = _norm_selection(ds, sel)
    out = np.empty(tuple(s.stop - s.start for s in full), dtype=ds.dtype)
    grids = [range(s.start // c, -(-s.stop // c)) for s, c in zip(full, ds.chunks)]
    for idx in itertools.product(*grids):
        origin = tuple(i * c for i, c in zip(idx, ds.chunks))
        part = tuple(slice(max(s.start, o), min(s.stop, o + c, n))
                     for s, o, c, n in zip(full, origin, ds.chunks, ds.shape))
        dest = tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part, full))
        try:
            out[dest] = ds[part]
            continue
        except OSError as exc:
            if not _is_checksum_error(exc):
                raise
        mask, raw = ds.id.read_direct_chunk(origin)
        nbytes = int(np.prod(ds.chunks)) * ds.dtype.itemsize
        body = raw[:-4] if ds.fletcher32 and not mask & 1 else raw
        if len(body) != nbytes:
            raise OSError(f"chunk at {origin} of {ds.name} is damaged beyond decoding")
        chunk = np.frombuffer(body, dtype=ds.dtype).reshape(ds.chunks)
        out[dest] = chunk[tuple(slice(p.start - o, p.stop - o) for p, o in zip(part, origin))]
        damaged[f"{ds.name}{list(origin)}"] = (
            f"{ds.name}: the chunk at {list(origin)} fails its checksum (a write cut short "
            "when the writer was killed, or damage); read as stored")
    return out[0] if squeeze else out


def _read_json_dataset(ds: h5py.Dataset) -> Any:
    raw = ds[0]
    return json.loads(bytes(raw).decode("utf-8"))


def _check_format(f: h5py.File, path: Path) -> RunLayout:
    """Check that `f` is a labpnn run file this version reads; return its layout."""
    try:
        fmt = f.attrs.get("labpnn_format")
    except _READ_ERRORS as exc:
        raise _damaged(path, "the root attributes", exc) from exc
    if fmt is None or _text(fmt) != FORMAT:
        raise RunLogError(f"{path}: an HDF5 file but not a labpnn run file "
                          "(no labpnn run layout: root attribute labpnn_format is missing)")
    try:
        version = int(f.attrs["format_version"])
    except _READ_ERRORS as exc:
        raise _damaged(path, "the format version", exc) from exc
    if version > FORMAT_VERSION:
        raise RunLogError(f"{path}: written by a newer labpnn (run-file format {version}); "
                          f"this labpnn reads format {FORMAT_VERSION} and older")
    try:
        layout = RunLayout.from_dict(_read_json_dataset(f["meta/layout"]))
    except _READ_ERRORS as exc:
        raise _damaged(path, "the run layout (meta/layout)", exc) from exc
    missing = [p for p in _required_paths(layout) if p not in f]
    if missing:
        raise RunLogError(f"{path}: not a complete labpnn run file: missing "
                          f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return layout


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

    def arrays(where: h5py.Group, shapes: Mapping[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            shape = tuple(int(n) for n in shape)
            maxshape = (None, *(None if n == 0 else n for n in shape))
            ds = where.create_dataset(_key(name), shape=(0, *shape), maxshape=maxshape,
                                      dtype="<f8", chunks=_array_chunks(shape, 8),
                                      fletcher32=True, fillvalue=np.nan)
            ds.attrs["name"] = name
            ds.attrs["axes"] = "revision, *shape"

    meta = f.create_group("meta")
    for name, value in (("recipe", recipe), ("bench", bench), ("provenance", provenance),
                        ("layout", layout.to_dict())):
        raw = _dumps(value)
        ds = meta.create_dataset(name, shape=(1,), dtype=f"S{max(1, len(raw))}",
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
    faults = f.create_group("faults")
    faults.create_dataset("json", shape=(0,), maxshape=(None,), dtype="u1",
                          chunks=(4096,), fletcher32=True).attrs["encoding"] = "JSON, UTF-8"
    table(faults, "index", RAGGED_INDEX_DTYPE)

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
        arrays(p.create_group("trained"), u.param_shapes)
        arrays(p.create_group("deployed"), u.deployed_shapes)
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


# --------------------------------------------------------------------------- writer

def _writes(method: Any) -> Any:
    """A writer method: whatever h5py or NumPy raise becomes a RunLogError naming the file."""
    import functools

    @functools.wraps(method)
    def wrapper(self: RunLog, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RunLogError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise RunLogError(f"{self.path}: cannot record {method.__name__}(): "
                              f"{type(exc).__name__}: {exc}") from exc
    return wrapper


class RunLog:
    """Writer, used from the engine's thread only. Every method flushes before returning."""

    path: Path
    layout: RunLayout

    def __init__(self, f: h5py.File, path: Path, layout: RunLayout):
        """Use create() or resume(); this binds an open, SWMR-writing file."""
        self._f = f
        self.path = path
        self.layout = layout
        self._closed = False
        self._recipe = _read_json_dataset(f["meta/recipe"])
        self._state = _text(f["state"][-1]["state"]) if len(f["state"]) else "idle"
        self._tables = {n: f[n] for n in ("state", "events", "accuracies", "checkpoints",
                                          "writers")}
        self._fault_json = f["faults/json"]
        self._fault_index = f["faults/index"]
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
            f = h5py.File(path, "x", libver="latest")
        except FileExistsError as exc:
            raise RunLogError(f"{path}: a file already exists there; a run file is never "
                              "overwritten") from exc
        except OSError as exc:
            raise RunLogError(f"{path}: cannot create the run file ({exc})") from exc
        try:
            _build(f, layout, recipe=recipe, bench=bench, provenance=provenance)
            f.flush()
            f.swmr_mode = True
            log = cls._bind(f, path, layout)
            log._writer_row("create")
            return log
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
    def _bind(cls, f: h5py.File, path: Path, layout: RunLayout) -> RunLog:
        key = str(path.resolve())
        with _OPEN_LOCK:
            if key in _OPEN_WRITERS:
                raise RunLogError(f"{path}: already open for writing in this process")
            _OPEN_WRITERS.add(key)
        try:
            return cls(f, path, layout)
        except BaseException:
            with _OPEN_LOCK:
                _OPEN_WRITERS.discard(key)
            raise

    @classmethod
    def resume(cls, path: str | Path) -> RunLog:
        """Reopen a killed, aborted or failed run for writing, keeping everything it holds.
        Optimisation rows past the last saved optimiser state are dropped.

        A file whose writer was killed still carries HDF5's "open for SWMR write" flags
        and cannot be reopened for writing (HDF5 has no public call to clear them); it is
        then copied whole into a fresh file next to it, which atomically replaces it.
        """
        path = Path(path)
        key = str(path.resolve())
        with _OPEN_LOCK:
            if key in _OPEN_WRITERS:
                raise RunLogError(f"{path}: still open for writing in this process; close it "
                                  "before resuming")
        # Look first (read-only): is it a run, and is its writer gone?
        if not path.is_file():
            raise RunLogError(f"{path}: no such run file")
        _check_not_truncated(path)
        try:
            src = _open_swmr_read(path)
        except Exception as exc:
            raise _open_error(path, exc) from exc
        try:
            layout = _check_format(src, path)
            _refuse_live_writer(src, path)
        finally:
            src.close()
        try:
            f = h5py.File(path, "r+", libver="latest")
        except OSError:
            f = None  # killed writer: the consistency flags are set -> repair by copying
        if f is None:
            _repair_by_copy(path, layout)
            try:
                f = h5py.File(path, "r+", libver="latest")
            except Exception as exc:
                raise _open_error(path, exc) from exc
        try:
            _drop_unsaved_steps(f, layout)
            f.flush()
            f.swmr_mode = True
            log = cls._bind(f, path, layout)
            log._writer_row("resume")
            return log
        except BaseException as exc:
            with contextlib.suppress(Exception):
                f.close()
            if isinstance(exc, RunLogError) or not isinstance(exc, Exception):
                raise
            raise RunLogError(f"{path}: cannot resume the run ({exc})") from exc

    # -- plumbing
    def _live(self) -> h5py.File:
        if self._closed:
            raise RunLogError(f"{self.path}: the run log is closed")
        return self._f

    def _flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            raise RunLogError(f"{self.path}: cannot write the run file ({exc})") from exc

    @staticmethod
    def _append(ds: h5py.Dataset, row: Any) -> None:
        n = ds.shape[0]
        ds.resize(n + 1, axis=0)
        ds[n] = row

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
        self._live()
        u = self._unit(unit)
        r = self._revision(revision)
        s = int(step)
        data = np.frombuffer(bytes(state) if not isinstance(state, bytes) else state,
                             dtype=np.uint8)
        self._append(u["info"], (r, s, float(loss), float(i_xz), float(i_yz), time.time()))
        ptr = u["ptr"]
        slot = 0 if ptr[2] != 0 else 1            # never the slot the pointer names
        ds = u["slots"][slot]
        if ds.shape[0] < data.size:
            ds.resize((data.size,))
        if data.size:
            ds[: data.size] = data
        self._flush()                             # the row and the state are on disk ...
        new = np.array([r, s, slot, data.size], dtype="<i8")
        u["pointer"][...] = new                   # ... before the pointer names them
        u["ptr"] = new
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
        raw = np.frombuffer(_dumps(rec), dtype=np.uint8)
        blob, index = self._fault_json, self._fault_index
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


# --------------------------------------------------------------------------- resume

def _last_writer(f: h5py.File) -> dict[str, Any] | None:
    ds = f["writers"]
    if not ds.shape[0]:
        return None
    row = ds[-1]
    return {"time": float(row["time"]), "action": _text(row["action"]), "pid": int(row["pid"]),
            "started": float(row["started"]), "host": _text(row["host"])}


def _writer_alive(w: dict[str, Any] | None) -> bool | None:
    """True/False if the last writer is (not) running; None when it cannot be told
    (another host)."""
    if w is None or w["action"] == "close":
        return False
    if w["host"] != _fixed(socket.gethostname(), 64).decode("utf-8", errors="replace"):
        return None
    if w["pid"] == os.getpid():
        return False  # this process: RunLog's registry tells open from abandoned
    return _pid_alive(w["pid"], w["started"])


def _refuse_live_writer(f: h5py.File, path: Path) -> None:
    try:
        w = _last_writer(f)
    except _READ_ERRORS as exc:
        raise _damaged(path, "the writers table", exc) from exc
    if _writer_alive(w):
        raise RunLogError(f"{path}: is still being written by process {w['pid']} on "
                          f"{w['host']}; stop that run before resuming it")


def _drop_unsaved_steps(f: h5py.File, layout: RunLayout) -> None:
    """Cut each unit's info plane after the row of its saved optimiser state."""
    for i in range(len(layout.units)):
        info = f[f"units/{i}/info_plane"]
        n = info.shape[0]
        if not n:
            continue
        rev, step = (int(v) for v in f[f"units/{i}/optimiser/pointer"][:2])
        rows = info.fields(["revision", "step"])[...]
        keep = (rows["revision"] < rev) | ((rows["revision"] == rev) & (rows["step"] <= step))
        bad = np.flatnonzero(~keep)
        cut = int(bad[0]) if bad.size else n
        if cut < n:
            info.resize((cut,))


def _copy_tree(src: h5py.File, dst: h5py.File, damaged: dict[str, str]) -> None:
    """Clone every group, attribute and dataset (creation properties and contents); chunks
    failing their checksum are copied as stored and listed in `damaged`."""
    for k, v in src.attrs.items():
        dst.attrs[k] = v

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group):
            g = dst.require_group(name)
            for k, v in obj.attrs.items():
                g.attrs[k] = v
            return
        kwargs: dict[str, Any] = {"shape": obj.shape, "dtype": obj.dtype,
                                  "maxshape": obj.maxshape}
        if obj.chunks is not None:
            kwargs.update(chunks=obj.chunks, fletcher32=obj.fletcher32,
                          compression=obj.compression, compression_opts=obj.compression_opts,
                          shuffle=obj.shuffle)
        if obj.fillvalue is not None and obj.chunks is not None:
            kwargs["fillvalue"] = obj.fillvalue
        d = dst.create_dataset(name, **kwargs)
        for k, v in obj.attrs.items():
            d.attrs[k] = v
        if obj.shape == ():
            d[()] = obj[()]
            return
        if not obj.size:
            return
        row_bytes = max(1, obj.dtype.itemsize * int(np.prod(obj.shape[1:], dtype=np.int64)))
        slab = max(1, _COPY_SLAB_BYTES // row_bytes)
        for a in range(0, obj.shape[0], slab):
            d[a: a + slab] = _tolerant_read(obj, slice(a, a + slab), damaged)

    src.visititems(visit)


def _repair_by_copy(path: Path, layout: RunLayout) -> None:
    """Copy a run file whose writer was killed into a fresh file and replace it atomically."""
    tmp = path.with_name(f".{path.name}.resume-{os.getpid()}.tmp")
    for stale in path.parent.glob(f".{path.name}.resume-*.tmp"):   # an interrupted repair
        with contextlib.suppress(ValueError, OSError):
            pid = int(stale.name.rsplit("-", 1)[1].split(".")[0])
            if pid == os.getpid() or not _pid_alive(pid, 0.0):
                stale.unlink()
    try:
        src = _open_swmr_read(path)
    except Exception as exc:
        raise _open_error(path, exc) from exc
    try:
        with h5py.File(tmp, "w", libver="latest") as dst:
            damaged: dict[str, str] = {}
            _copy_tree(src, dst, damaged)
            _drop_unsaved_steps(dst, layout)
            spare = {f"/units/{i}/optimiser/slot{k}" for i in range(len(layout.units))
                     for k in (0, 1)
                     if k != int(dst[f"units/{i}/optimiser/pointer"][2])}
            notes = [m for k, m in damaged.items() if k.split("[")[0] not in spare]
            if notes:
                RunLog._append(dst["events"], _row(
                    EVENT_DTYPE, time=time.time(), kind=b"warning", unit=-1,
                    message=_fixed("resume: " + "; ".join(notes), MESSAGE_BYTES)))
        src.close()
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            src.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, Exception) and not isinstance(exc, RunLogError):
            raise RunLogError(f"{path}: cannot resume: copying the run into a fresh file "
                              f"failed ({type(exc).__name__}: {exc}); the original is "
                              "untouched") from exc
        raise


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


class RunReader:
    """Reader (SWMR), safe while a writer is live; refresh() picks up new rows."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f: h5py.File | None = None
        self.damaged: dict[str, str] = {}   # chunks read despite a failed checksum
        self._open()

    def _open(self) -> None:
        path = self.path
        if not path.exists():
            raise RunLogError(f"{path}: no such run file")
        if path.is_dir():
            raise RunLogError(f"{path}: is a directory, not a run file")
        _check_not_truncated(path)
        try:
            f = _open_swmr_read(path)
        except Exception as exc:
            raise _open_error(path, exc) from exc
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
        its checksum): refresh and retry before calling the file damaged."""
        return self._read(name, Ellipsis)

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
    def faults(self) -> list[dict[str, Any]]:
        index = self._table("faults/index")
        if not index.size:
            return []
        blob = self._table("faults/json")
        out = []
        with self._reading("the fault records (faults/)"):
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
        active: dict[str, int] = {}
        for i in range(len(self.layout.units)):
            with self._reading(f"units/{i}/optimiser/pointer"):
                _, _, slot, nbytes = (int(v) for v in
                                      self._file()[f"units/{i}/optimiser/pointer"][...])
            for k in (0, 1):
                active[f"/units/{i}/optimiser/slot{k}"] = nbytes if k == slot else 0
        for ds in self._datasets:
            with self._reading(ds.name):
                if ds.name in active:   # the spare slot may hold a write cut short: scratch
                    if active[ds.name]:
                        ds[: active[ds.name]]
                    continue
                if ds.shape == ():
                    ds[()]
                    continue
                if not ds.size:
                    continue
                row_bytes = max(1, ds.dtype.itemsize
                                * int(np.prod(ds.shape[1:], dtype=np.int64)))
                slab = max(1, _COPY_SLAB_BYTES // row_bytes)
                for a in range(0, ds.shape[0], slab):
                    ds[a: a + slab]

    def summary(self) -> dict[str, Any]:
        """What `labpnn inspect --json` prints."""
        checkpoints = self.checkpoints
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
            "accuracies": accuracies,
            "checkpoints": [{"unit": None if u < 0 else u, "revision": r, "phase": p}
                            for u, r, p in checkpoints],
            "events": self.events,
            "faults": self.faults,
            "provenance": self.provenance,
            "bench": self.bench,
            "damaged": list(self.damaged.values()),
        })


# --------------------------------------------------------------------------- text summary

def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100.0 * float(v):.1f} %"


def _bits(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f} bits"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "n/a"
    s = int(round(float(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def format_summary(summary: Mapping[str, Any]) -> str:
    """A human-readable multi-line summary of RunReader.summary() (for `labpnn inspect`)."""
    lines = []
    recipe = summary.get("recipe") or {}
    title = recipe.get("name") if isinstance(recipe, Mapping) else None
    lines.append(f"run: {summary.get('file', '?')}" + (f"  (recipe {title})" if title else ""))
    state = summary.get("state", "?")
    reason = summary.get("reason") or ""
    lines.append(f"state: {state}" + (f" ({reason})" if reason else ""))
    lines.append(f"duration: {_duration(summary.get('duration_s'))}"
                 + (f"; resumed {summary['resumes']} time(s)" if summary.get("resumes") else ""))
    prov = summary.get("provenance") or {}
    if isinstance(prov, Mapping) and prov.get("simulated") is not None:
        lines.append("hardware: " + ("simulated (digital twins)" if prov["simulated"]
                                     else "real instruments"))
    accs = summary.get("accuracies") or []
    for u in summary.get("units") or []:
        last = u.get("last")
        head = f"unit {u.get('index', '?')} {u.get('name', '?')!r} ({u.get('kind', '?')}):"
        if last:
            rev = last.get("revision")
            in_rev = sum(1 for row in u.get("info_plane") or [] if row.get("revision") == rev)
            total = u.get("steps", 0)
            loss = last.get("loss")
            head += (f" revision {rev}, {in_rev} steps"
                     + (f" ({total} in all revisions)" if total != in_rev else "")
                     + f"; last step {last.get('step')}: I(X;Z) = {_bits(last.get('I_XZ'))}, "
                     f"I(Y;Z) = {_bits(last.get('I_YZ'))}, loss "
                     + ("n/a" if loss is None else f"{float(loss):.4g}"))
        else:
            head += " not optimised yet"
        lines.append(head)
        probes = [a for a in accs if a.get("unit") == u.get("index")]
        if probes:
            latest: dict[str, Any] = {}
            for a in probes:
                latest[f"{a.get('what')} {a.get('split')}"] = a.get("value")
            lines.append("    accuracy: " + ", ".join(f"{k} {_pct(v)}"
                                                      for k, v in latest.items()))
        phases = [c.get("phase") for c in u.get("checkpoints") or []]
        if phases:
            lines.append(f"    checkpoints: {', '.join(str(p) for p in phases)}")
    final = [a for a in accs if a.get("unit") is None]
    if final:
        latest = {}
        for a in final:
            latest[str(a.get("split"))] = a.get("value")
        lines.append("final readout: " + ", ".join(f"{k} {_pct(v)}" for k, v in latest.items()))
    else:
        lines.append("final readout: none yet")
    faults = summary.get("faults") or []
    lines.append(f"faults: {len(faults)}")
    for fr in faults:
        unit = fr.get("unit")
        lines.append(
            f"  - {fr.get('kind')} on unit {unit if unit is not None else '-'}"
            f" channels {fr.get('channels')}: accuracy {_pct(fr.get('accuracy_before'))}"
            f" -> {_pct(fr.get('accuracy_after_fault'))} after the fault"
            f" -> {_pct(fr.get('accuracy_recovered'))} recovered"
            + (f"; {fr.get('message')}" if fr.get("message") else ""))
    events = summary.get("events") or []
    warnings = [e for e in events if e.get("kind") in ("warning", "fault")]
    lines.append(f"events: {len(events)}" + (f", {len(warnings)} warnings/faults"
                                             if warnings else ""))
    for e in warnings[-5:]:
        lines.append(f"  - {e.get('kind')}: {e.get('message')}")
    for d in summary.get("damaged") or []:
        lines.append(f"WARNING: {d}")
    return "\n".join(lines)
