"""Run-log write speed: one PIB step (info-plane row + ~40 KB optimiser state + flushes).

    python benchmarks/bench_runlog.py [--steps 2000] [--state-kb 40] [--dir /tmp]

The engine calls RunLog.step once per optimisation step; it must stay well under 10 ms.
Also times an event, a 256-row feature block and a live RunReader refresh + info-plane read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from labpnn.events import InfoEvent
from labpnn.runlog import RunLayout, RunLog, RunReader, UnitLayout


def _layout(steps: int) -> RunLayout:
    unit = UnitLayout(name="crossbar0", kind="crossbar", in_features=40, out_features=64,
                      param_shapes={"weight": (64, 40), "bias": (64,)},
                      deployed_shapes={"weights": (40, 64), "g_target": (40, 128),
                                       "g_read": (40, 128)}, steps=steps)
    return RunLayout(units=[unit], n_train=4000, n_test=1000, n_classes=10,
                     readout_param_shapes={"weight": (10, 64), "bias": (10,)})


def _stats(name: str, seconds: list[float]) -> None:
    ms = np.array(seconds) * 1e3
    print(f"{name:<34} n={len(ms):5d}  median {np.median(ms):7.3f} ms  "
          f"p95 {np.percentile(ms, 95):7.3f} ms  p99 {np.percentile(ms, 99):7.3f} ms  "
          f"max {ms.max():7.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--state-kb", type=int, default=40)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.h5"
        log = RunLog.create(path, _layout(args.steps), recipe={"name": "bench"}, bench={},
                            provenance={"simulated": True})
        rng = np.random.default_rng(0)
        state = rng.integers(0, 256, args.state_kb * 1024, dtype=np.uint8).tobytes()
        step_t, step_cpu = [], []
        for s in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            log.step(0, 0, s, loss=1.0 / (s + 1), i_xz=0.01 * s, i_yz=0.005 * s, state=state)
            step_t.append(time.perf_counter() - t0)
            step_cpu.append(time.process_time() - c0)
        event_t = []
        for i in range(200):
            t0 = time.perf_counter()
            log.event(InfoEvent(text=f"message {i}", unit=0))
            event_t.append(time.perf_counter() - t0)
        feat_t = []
        block = rng.standard_normal((256, 64)).astype(np.float32)
        for start in range(0, 4000 - 256, 256):
            t0 = time.perf_counter()
            log.features(0, 0, "train", start, block)
            feat_t.append(time.perf_counter() - t0)
        reader = RunReader(path)
        read_t = []
        for s in range(200):
            log.step(0, 1, s, loss=0.0, i_xz=0.0, i_yz=0.0, state=state)
            t0 = time.perf_counter()
            reader.refresh()
            reader.units[0].info_plane
            read_t.append(time.perf_counter() - t0)
        reader.close()
        log.close()
        size = os.path.getsize(path)
    print(f"run log benchmark: {args.steps} steps, {args.state_kb} KB optimiser state")
    _stats("step (row + state + 2 flushes)", step_t)
    _stats("  CPU time of a step", step_cpu)
    _stats("event", event_t)
    _stats("features (256 x 64 float32)", feat_t)
    _stats("reader refresh + info plane", read_t)
    print(f"file size {size / 1e6:.1f} MB; mean step {statistics.fmean(step_t) * 1e3:.3f} ms "
          f"(wall-clock tails grow with machine load; the CPU time does not)")


if __name__ == "__main__":
    main()
