"""Low-level HDF5 helpers: string and JSON encodings, process liveness, fsync, SWMR
reading with few metadata read attempts, tolerant reads of chunks failing their checksum,
open and read errors as sentences, and the format check of a run file."""

from __future__ import annotations

import enum
import json
import math
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from labpnn.errors import RunLogError
from labpnn.runlog.layout import (
    LIBVER,
    _COPY_SLAB_BYTES, ELLIPSIS, FORMAT, FORMAT_VERSION, RunLayout, _required_paths,
)

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


def _append(ds: h5py.Dataset, row: Any) -> None:
    """One row more, in the dataset's own dtype (a file written before its strings were declared
    UTF-8 keeps them ASCII: HDF5 converts neither way between the two)."""
    n = ds.shape[0]
    ds.resize(n + 1, axis=0)
    ds[n] = row.astype(ds.dtype) if isinstance(row, np.ndarray) and row.dtype.names else row


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
_libhdf5_cache: list[Any] = []   # [the libhdf5 h5py uses, as a ctypes.CDLL, or None]


def _find_libhdf5() -> Any:
    """The libhdf5 that h5py is linked to, as a ctypes.CDLL (for the two calls h5py does not
    wrap: H5Pset_metadata_read_attempts, and H5Pset of the "clear_status_flags" property
    h5clear uses); None when that library cannot be found."""
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
            lib.H5Pset.argtypes = [ctypes.c_int64, ctypes.c_char_p, ctypes.c_void_p]
            lib.H5Pset.restype = ctypes.c_int
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
        getter.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_uint)]
        getter.restype = ctypes.c_int
        probe = h5py.h5p.create(h5py.h5p.FILE_ACCESS)   # same library as h5py's ids?
        got = ctypes.c_uint(0)
        if setter(probe.id, 7) >= 0 and getter(probe.id, ctypes.byref(got)) >= 0 \
                and got.value == 7:
            return lib
    return None


def _libhdf5() -> Any:
    if not _libhdf5_cache:
        try:
            _libhdf5_cache.append(_find_libhdf5())
        except Exception:
            _libhdf5_cache.append(None)
    return _libhdf5_cache[0]


def _open_swmr_read(path: Path) -> h5py.File:
    """h5py.File(path, "r", swmr=True), with few metadata read attempts."""
    lib = _libhdf5()
    if lib is None:
        return h5py.File(path, "r", swmr=True)
    for locking in (True, False):
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
        lib.H5Pset_metadata_read_attempts(fapl.id, _READ_ATTEMPTS)
        if not locking:
            fapl.set_file_locking(False, True)
        try:
            return h5py.File(h5py.h5f.open(
                os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl))
        except OSError as exc:   # this process writes it, resumed without the file lock
            if not locking or "locking flag values don't match" not in str(exc):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _can_clear_flags() -> bool:
    """Whether _open_in_place can reopen a file a killed writer left flagged open."""
    return _libhdf5() is not None


def _open_in_place(path: Path) -> h5py.File:
    """The run file opened for writing where it lies, its "open for (SWMR) write" flags
    cleared as `h5clear -s` does (a killed writer leaves them set), and without HDF5's file
    lock, which the SWMR readers watching it hold: the caller has made sure that no writer
    is alive and switches SWMR on before changing anything."""
    import ctypes

    lib = _libhdf5()
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    bound = getattr(h5py.h5f, f"LIBVER_{LIBVER[1].upper()}")  # what the file was created with
    fapl.set_libver_bounds(bound, bound)
    fapl.set_file_locking(False, True)
    clear = ctypes.c_bool(True)
    if lib.H5Pset(fapl.id, b"clear_status_flags", ctypes.byref(clear)) < 0:
        raise OSError("this HDF5 has no clear_status_flags property")
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl=fapl))


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


def _check_regular_file(path: Path) -> None:
    """RunLogError unless `path` is a regular file (a FIFO would block every open)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise RunLogError(f"{path}: no such run file") from None
    except OSError as exc:
        raise RunLogError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise RunLogError(f"{path}: is a directory, not a run file")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise RunLogError(f"{path}: is {kind}, not a run file (a run file is a regular "
                          "HDF5 file)")


def _open_run_file(path: Path) -> h5py.File:
    """An existing run file opened for SWMR reading, or a RunLogError saying what is wrong:
    missing, a directory, truncated, or not readable as HDF5."""
    _check_regular_file(path)
    _check_not_truncated(path)
    try:
        return _open_swmr_read(path)
    except Exception as exc:
        raise _open_error(path, exc) from exc


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
    try:
        missing = [p for p in _required_paths(layout) if p not in f]
    except _READ_ERRORS as exc:
        raise _damaged(path, "the file structure", exc) from exc
    if missing:
        raise RunLogError(f"{path}: not a complete labpnn run file: missing "
                          f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return layout


def _optimiser_extents(f: h5py.File, layout: RunLayout) -> dict[str, int]:
    """{slot dataset: bytes that matter}: the slot the pointer names holds its state, the
    spare slot is scratch (0: a kill may have cut a write into it)."""
    out: dict[str, int] = {}
    for i in range(len(layout.units)):
        _, _, slot, nbytes = (int(v) for v in f[f"units/{i}/optimiser/pointer"][...])
        for k in (0, 1):
            out[f"/units/{i}/optimiser/slot{k}"] = nbytes if k == slot else 0
    return out


def _read_everything(f: h5py.File, path: Path, layout: RunLayout,
                     damaged: dict[str, str] | None = None) -> None:
    """Read every attribute and every byte of every dataset (checksums checked) except the
    spare optimiser slots; RunLogError naming what cannot be read. With `damaged`, a chunk
    failing its checksum that decodes as stored is noted there instead (a torn write)."""
    try:
        extents = _optimiser_extents(f, layout)
        objects: list[h5py.HLObject] = [f]
        f.visititems(lambda _n, o: objects.append(o))
    except _READ_ERRORS as exc:
        raise _damaged(path, "the file structure", exc) from exc
    for obj in objects:
        try:
            for key in obj.attrs:
                obj.attrs[key]
            if not isinstance(obj, h5py.Dataset):
                continue
            n = extents.get(obj.name, obj.shape[0] if obj.shape else None)
            if n is None:
                obj[()]
                continue
            row_bytes = max(1, obj.dtype.itemsize * int(np.prod(obj.shape[1:], dtype=np.int64)))
            slab = max(1, _COPY_SLAB_BYTES // row_bytes)
            for a in range(0, n, slab):
                sel = slice(a, min(n, a + slab))
                if damaged is None:
                    obj[sel]
                else:
                    _tolerant_read(obj, sel, damaged)
        except _READ_ERRORS as exc:
            raise _damaged(path, obj.name, exc) from exc
