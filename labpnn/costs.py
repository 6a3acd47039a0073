"""What a run cost: instrument calls, samples measured, payload bytes, time in instrument calls
(counted by the measurement link, labpnn.link), and the process's wall time and peak memory.

The engine writes one record per execution into the run file's site records (site "local",
what "costs"; `labpnn inspect` prints it as its costs line), so every run carries its own bill:

    calls            instrument calls: measurement batches (each repeat counted) and deployments
    deployments      parameter sets programmed (read back included)
    samples          input rows measured, each repeat counted
    bytes_sent       payload handed to the units: input rows and deployed parameters (float32);
    bytes_received   and taken from them: measured rows and read-backs. An in-process twin has
                     no wire: these are the bytes a link would carry with measure.format float32
    busy_s           wall time inside instrument calls
    wall_s           this execution's wall time
    rss_start_mb, peak_rss_mb   the process's resident memory when the execution started, and its
                     peak (since the process started, or since reset_peak(): labpnn.compare.jobs
                     resets it before each job, so there it is the job's own)

Calls made by a scheme straight on a unit, not through the context, and a scattering unit's
optical stage (prepare) are not counted, except scheme online's, whose agent reports each
measurement of a unit's optics (the actor's states and the learner's re-measurements). No twin
keeps a clock of its own: the OPU twin sleeps its frame time (so it is in busy_s), the crossbar
twin takes no time.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

__all__ = ["HardwareCounter", "peak_rss_mb", "record", "reset_peak", "rss_mb"]


@dataclass
class HardwareCounter:
    """Counts what the measurement link asks of the instruments (thread-safe)."""

    calls: int = 0
    deployments: int = 0
    samples: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    busy_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def measured(self, rows: np.ndarray, out: np.ndarray, repeats: int, seconds: float) -> None:
        with self._lock:
            self.calls += repeats
            self.samples += len(rows) * repeats
            self.bytes_sent += _float32_bytes(rows) * repeats
            self.bytes_received += _float32_bytes(out) * repeats
            self.busy_s += seconds

    def deployed(self, arrays: dict[str, np.ndarray], seconds: float) -> None:
        size = sum(_float32_bytes(a) for a in arrays.values())
        with self._lock:
            self.calls += 1
            self.deployments += 1
            self.bytes_sent += size
            self.bytes_received += size
            self.busy_s += seconds

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def _float32_bytes(a: np.ndarray) -> int:
    return int(np.size(a)) * 4


def rss_mb() -> float | None:
    """The process's resident memory now, MB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return None


def peak_rss_mb() -> float:
    """The process's peak resident memory since it started or since reset_peak(), MB."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**10
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reset_peak() -> bool:
    """Start the peak of peak_rss_mb() afresh at the present RSS (Linux >= 4.0: /proc/self/clear_refs);
    a harness running one job after another in a process calls it before each. False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def record(counter: HardwareCounter, started: float, rss_start: float | None) -> dict[str, Any]:
    """The run file's costs record for one execution that started at `started` (perf_counter)."""
    return {"site": "local", "what": "costs", "unit": None, "revision": None, **counter.counts(),
            "wall_s": time.perf_counter() - started,
            "rss_start_mb": rss_start, "peak_rss_mb": peak_rss_mb()}
