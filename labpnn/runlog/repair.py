"""Resuming a run: what refuses it (a live writer, a finished run, a file its owner
protected), one resume at a time per folder, dropping optimisation rows past the last saved
optimiser state, and copying a file into a fresh one when it cannot be resumed in place."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from labpnn.errors import RunLogError
from labpnn.runlog.h5io import (
    _READ_ERRORS, _append, _damaged, _fixed, _fsync_path, _open_error, _open_swmr_read,
    _pid_alive, _row, _text, _tolerant_read,
)
from labpnn.runlog.layout import (
    _COPY_SLAB_BYTES, COMMITTED, EVENT_DTYPE, LIBVER, MESSAGE_BYTES, RunLayout,
)

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


def _refuse_finished(f: h5py.File, path: Path) -> None:
    try:
        state = f["state"]
        last = _text(state[-1]["state"]) if state.shape[0] else "idle"
    except _READ_ERRORS as exc:
        raise _damaged(path, "the state table", exc) from exc
    if last == "done":
        raise RunLogError(f"{path}: the run finished (state done): there is nothing to resume, "
                          "and the file was left as it is")


def _refuse_protected(path: Path) -> None:
    """RunLogError unless this user may write the run file: resuming a file its owner made
    read-only would replace it (the folder being writable) behind the owner's back."""
    if os.access(path, os.W_OK):
        return
    st = path.stat()
    try:
        import pwd
        owner = pwd.getpwuid(st.st_uid).pw_name
    except (ImportError, KeyError):
        owner = f"uid {st.st_uid}"
    raise RunLogError(f"{path}: cannot resume: you may not write this run file (mode "
                      f"{stat.filemode(st.st_mode)}, owner {owner}); resuming it would replace "
                      "a file its owner protected. Resume a copy of it (cp, then labpnn run "
                      "--resume COPY), or ask its owner")


@contextlib.contextmanager
def _resume_lock(path: Path, patience_s: float = 5.0) -> Iterator[None]:
    """One resume at a time in the run file's folder (an advisory lock on the folder): two
    processes resuming the same run would both find its writer gone."""
    try:
        import fcntl
        fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (ImportError, OSError):   # no flock here: the writers table is the only guard
        yield
        return
    try:
        deadline = time.monotonic() + patience_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunLogError(f"{path}: another run in {path.parent} is being resumed "
                                      "right now; try again in a moment") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)   # releases the lock


def _drop_uncommitted_rows(f: h5py.File) -> None:
    """Cut each counted table at its committed row count (meta/committed): rows a killed
    writer had made room for but may not have written."""
    if COMMITTED not in f:
        return
    done = f[COMMITTED]
    for name, n in zip(json.loads(_text(done.attrs["tables"])), done[...]):
        ds = f[name]
        if ds.shape[0] > n:
            ds.resize(int(n), axis=0)


def _commit_all_rows(f: h5py.File) -> None:
    """Count every row of the counted tables as committed (a file no writer holds)."""
    if COMMITTED in f:
        done = f[COMMITTED]
        done[...] = [f[n].shape[0] for n in json.loads(_text(done.attrs["tables"]))]


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
        with h5py.File(tmp, "w", libver=LIBVER) as dst:
            damaged: dict[str, str] = {}
            _copy_tree(src, dst, damaged)
            _drop_unsaved_steps(dst, layout)
            spare = {f"/units/{i}/optimiser/slot{k}" for i in range(len(layout.units))
                     for k in (0, 1)
                     if k != int(dst[f"units/{i}/optimiser/pointer"][2])}
            notes = [m for k, m in damaged.items() if k.split("[")[0] not in spare]
            _drop_uncommitted_rows(dst)
            if notes:
                _append(dst["events"], _row(
                    EVENT_DTYPE, time=time.time(), kind=b"warning", unit=-1,
                    message=_fixed("resume: " + "; ".join(notes), MESSAGE_BYTES)))
            _commit_all_rows(dst)
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
