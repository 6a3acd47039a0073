"""Throughput and memory of the optical twins at realistic sizes, against a bare NumPy matmul.

    python benchmarks/bench_optics.py [--batch 1000] [--inputs 784] [--outputs 10000] [--repeats 3]

Cases: |X R|^2 as one complex64 matmul (the reference), the OPU twin in process, the OPU twin
behind `labpnn sim opu` over TCP (a separate process), the SLM + camera twins (sequence mode
and frame by frame), and the screen SLM's display round trip (offscreen Qt). Latencies are
off (0 settle, 0 frame time) except in the row that says otherwise.
Memory: "setup" is the RSS growth for building and connecting the case (the matrices; for
TCP, of the server process), "peak" the largest transient NumPy allocation during one batch
in this process (tracemalloc).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import psutil

from labpnn.drivers.opu import OPU
from labpnn.sim_devices.opu import SimOPUDevice
from labpnn.sim_devices.optics import SimCamera, SimSLM
from labpnn.units.scattering import SLMCameraProjector

MB = 2**20


def rss(process: psutil.Process | None = None) -> int:
    return (process or psutil.Process()).memory_info().rss


def timed(fn, repeats: int) -> tuple[float, float]:
    """(seconds per call, peak traced MB) after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    seconds = (time.perf_counter() - start) / repeats
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / MB
    tracemalloc.stop()
    return seconds, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--inputs", type=int, default=784)
    parser.add_argument("--outputs", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n, k, m = args.batch, args.inputs, args.outputs
    rng = np.random.default_rng(0)
    X = (rng.random((n, k)) < 0.5).astype(np.uint8)
    rows = []

    def case(name: str, setup, run, batch: int = n, process: psutil.Process | None = None):
        """Time run(setup()); `process` holds the setup's memory (default: this one)."""
        before = rss(process)
        state = setup()
        setup_mb = (rss(process) - before) / MB
        seconds, peak = timed(lambda: run(state), args.repeats)
        rows.append((name, batch, seconds * 1e3, batch / seconds, setup_mb, peak))
        return state

    def bare_setup():
        R = (rng.standard_normal((k, m), dtype=np.float32)
             + 1j * rng.standard_normal((k, m), dtype=np.float32)).astype(np.complex64)
        return R, X.astype(np.complex64)

    case("NumPy |X R|^2, complex64 matmul", bare_setup, lambda s: np.abs(s[1] @ s[0]) ** 2)

    def opu_setup(**options):
        opu = SimOPUDevice(m, k, **options)
        opu.connect()
        opu.fit1d(X=X)
        return opu

    opu = case("OPU twin, in process", opu_setup, lambda o: o.project(X))
    opu.close()
    opu = case("OPU twin, frametime 500 us", lambda: opu_setup(frametime_us=500.0), lambda o: o.project(X))
    opu.close()

    server = subprocess.Popen([sys.executable, "-m", "labpnn", "sim", "opu", "--tcp", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        address = server.stdout.readline().split()[-1]

        def remote_setup():
            remote = OPU(m, k, resource=address)
            remote.connect()
            remote.fit1d(X=X)
            return remote

        remote = case("OPU twin over TCP (server process)", remote_setup, lambda o: o.project(X),
                      process=psutil.Process(server.pid))
        remote.close()
    finally:
        server.terminate()
        server.wait()
        server.stdout.close()

    macro, side = 4, int(np.ceil(np.sqrt(k)))
    cam_side = int(np.ceil(np.sqrt(m)))

    def slm_camera_setup(table: str, slm_class: type = SimSLM):
        slm = slm_class(table=table, width=side * macro, height=side * macro, mode_block=macro)
        camera = SimCamera(table=table, width=cam_side, height=cam_side)
        projector = SLMCameraProjector(slm, camera, k, m, macro_pixel=macro)
        projector.connect()
        projector.project(X[:1])  # builds the transmission matrix
        return projector

    projector = case("SLM + camera twins, sequence mode", lambda: slm_camera_setup("bench-seq"),
                     lambda p: p.project(X))
    projector.close()
    frames = X[: min(n, 100)]
    projector = case("SLM + camera twins, frame by frame",
                     lambda: slm_camera_setup("bench-single", _FrameByFrameSLM),
                     lambda p: p.project(frames), batch=len(frames))
    projector.close()
    rows.append(_screen_slm(args.repeats))

    print(f"\nbatch {n}, {k} inputs -> {m} outputs, {os.cpu_count()} CPUs, NumPy {np.__version__}\n")
    print(f"{'case':<38} {'batch':>6} {'ms / batch':>11} {'projections / s':>16} {'vs NumPy':>9} "
          f"{'setup MB':>9} {'peak MB':>8}")
    floor = rows[0][3]
    for name, batch, ms, rate, setup_mb, peak in rows:
        print(f"{name:<38} {batch:>6} {ms:>11.1f} {rate:>16,.0f} {rate / floor:>8.2f}x {setup_mb:>9.1f} {peak:>8.1f}")
    return 0


class _FrameByFrameSLM(SimSLM):
    """A SimSLM without sequence mode: the projector shows and grabs one input at a time."""

    def __getattribute__(self, name: str):
        if name == "show_sequence":
            raise AttributeError(name)
        return super().__getattribute__(name)


def _screen_slm(repeats: int):
    """ScreenSLM.show() round trip at 1920x1080 (offscreen Qt; verify read-back on)."""
    from labpnn.drivers.slm import ScreenSLM

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    frames = np.random.default_rng(0).integers(0, 256, (10, 1080, 1920), dtype=np.uint8)
    before = rss()
    with ScreenSLM(width=1920, height=1080, settle_ms=0, fullscreen=False) as slm:
        setup_mb = (rss() - before) / MB

        def show_all():
            for frame in frames:
                slm.show(frame)

        seconds, peak = timed(show_all, repeats)
    return ("ScreenSLM show 1920x1080 (offscreen)", len(frames), seconds * 1e3, len(frames) / seconds,
            setup_mb, peak)


if __name__ == "__main__":
    sys.exit(main())
