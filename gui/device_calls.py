"""Instrument calls off the GUI thread: one worker thread per instrument, results as a signal."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QObject, Signal


class DeviceCalls(QObject):
    """`submit(name, action, fn)` runs fn() on the instrument's own thread (calls to one
    instrument stay in order; a slow real instrument blocks nothing else) and then emits
    `done(name, action, result, error)` on the GUI thread; error is "" on success."""

    done = Signal(str, str, object, str)

    def __init__(self, names: list[str], parent: QObject | None = None):
        super().__init__(parent)
        self._pools = {n: ThreadPoolExecutor(1, thread_name_prefix=f"instrument-{n}") for n in names}
        self._pending: dict[str, int] = dict.fromkeys(names, 0)
        self.done.connect(self._settled)  # connected first: `busy` is up to date in every other slot

    def submit(self, name: str, action: str, fn: Callable[[], Any]) -> None:
        self._pending[name] += 1
        self._pools[name].submit(self._call, name, action, fn)

    def _call(self, name: str, action: str, fn: Callable[[], Any]) -> None:
        try:
            result, error = fn(), ""
        except Exception as exc:
            result, error = None, str(exc) or type(exc).__name__
        self.done.emit(name, action, result, error)

    def busy(self, name: str) -> bool:
        return self._pending[name] > 0

    def _settled(self, name: str, *_: object) -> None:
        self._pending[name] -= 1

    def shutdown(self) -> None:
        """Wait for the calls in flight (an instrument is never left mid-command)."""
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
