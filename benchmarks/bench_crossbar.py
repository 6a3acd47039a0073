"""Crossbar MVM throughput: a 1024x128 array (a 1024x64 signed matrix as differential pairs)
and a batch of 1000 input vectors, through the in-process twin, the driver over TCP and
over a pty to `labpnn sim crossbar` (a separate process), against a bare NumPy matmul of
the same shapes and the raw loopback rate of the same request and reply bytes.

Wall time is what the targets are about; CPU time (this process, plus the simulator
process for the wire paths; Linux) is the work done, which a busy machine does not inflate.
Targets: in-process twin >= 0.5 x NumPy; TCP >= 0.5 x raw socket.
Run: python benchmarks/bench_crossbar.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from labpnn.drivers.crossbar import CrossbarBoard
from labpnn.sim_devices.crossbar import SimCrossbarBoard

ROWS, COLS, BATCH = 1024, 128, 1000


def no_other_cpu() -> float:
    return 0.0


def cpu_of(pid: int) -> Callable[[], float]:
    """Seconds of CPU the process `pid` has used so far (Linux /proc; 0 elsewhere)."""
    def read() -> float:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return read


def timed(fns: dict[str, tuple[Callable[[], object], Callable[[], float]]], repeats: int
          ) -> dict[str, tuple[float, float, float]]:
    """{name: (best, median wall, mean CPU) seconds} over `repeats` runs after a warm-up;
    each fn comes with the CPU clock of the other process it drives. The functions take
    turns, so a busy machine slows them alike."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for fn, _ in fns.values():
        fn()
    for _ in range(repeats):
        for name, (fn, other_cpu) in fns.items():
            cpu, other, wall = time.process_time(), other_cpu(), time.perf_counter()
            fn()
            runs[name].append((time.perf_counter() - wall,
                               time.process_time() - cpu + other_cpu() - other))
    return {name: (min(w for w, _ in r), statistics.median(w for w, _ in r),
                   statistics.mean(c for _, c in r)) for name, r in runs.items()}


def raw_socket(request: int, reply: int) -> Callable[[], None]:
    """One round trip of `request` bytes out and `reply` bytes back over loopback TCP, to a
    server thread that only counts bytes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        inbox, answer = bytearray(request), bytes(reply)
        view = memoryview(inbox)
        with conn:
            while True:
                got = 0
                while got < request:
                    n = conn.recv_into(view[got:])
                    if n == 0:
                        return
                    got += n
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    client = socket.create_connection(listener.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out, back = bytes(request), bytearray(reply)
    back_view = memoryview(back)

    def round_trip():
        client.sendall(out)
        got = 0
        while got < reply:
            got += client.recv_into(back_view[got:])

    return round_trip


@contextmanager
def driver(*args: str) -> Iterator[tuple[CrossbarBoard, Callable[[], float]]]:
    """The driver connected to `labpnn sim crossbar ARGS` in a subprocess, and the
    subprocess's CPU clock."""
    proc = subprocess.Popen([sys.executable, "-m", "labpnn", "sim", "crossbar", *args],
                            stdout=subprocess.PIPE, text=True)
    try:
        resource = proc.stdout.readline().split()[2]
        with CrossbarBoard(resource=resource, timeout_ms=60000) as board:
            yield board, cpu_of(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((ROWS, COLS // 2)).astype(np.float32)
    x = rng.standard_normal((BATCH, ROWS)).astype(np.float32)
    g = rng.uniform(1e-6, 40e-6, (ROWS, COLS)).astype(np.float32)

    with SimCrossbarBoard(seed=0) as twin:
        twin.program_weights(w)
        rows = timed({"NumPy matmul (1000x1024 @ 1024x128)": (lambda: x @ g, no_other_cpu),
                      "in-process twin": (lambda: twin.matmul(x), no_other_cpu)}, args.repeats)
    head = len(f"MEAS:MVM? {BATCH},0,{ROWS},0,{COLS},#7") + 7
    with driver("--tcp", "127.0.0.1:0") as (tcp, server_cpu):
        tcp.program_weights(w)
        rows.update(timed({"raw loopback socket, same bytes":
                           (raw_socket(head + x.nbytes + 1, 10 + BATCH * COLS * 4), no_other_cpu),
                           "driver over TCP (twin in a subprocess)":
                           (lambda: tcp.matmul(x), server_cpu)}, args.repeats))
    with driver("--pty") as (pty, server_cpu):
        pty.program_weights(w)
        rows.update(timed({"driver over a pty (twin in a subprocess)":
                           (lambda: pty.matmul(x), server_cpu)}, max(3, args.repeats // 5)))

    print(f"crossbar MVM throughput: array {ROWS}x{COLS}, batch {BATCH}, float32; "
          f"{args.repeats} runs each\n")
    print(f"{'path':42s} {'best wall':>10s} {'median':>10s} {'CPU':>10s} {'vectors/s':>11s}")
    for name, (best, median, cpu) in rows.items():
        print(f"{name:42s} {best * 1e3:7.2f} ms {median * 1e3:7.2f} ms {cpu * 1e3:7.2f} ms "
              f"{BATCH / best:11,.0f}")
    (numpy_, _, numpy_cpu), (twin_, _, twin_cpu), (raw, _, raw_cpu), (tcp_, _, tcp_cpu) = \
        list(rows.values())[:4]
    print(f"\nin-process twin / NumPy: {numpy_ / twin_:.2f} by wall, {numpy_cpu / twin_cpu:.2f} "
          "by CPU (target >= 0.5)")
    print(f"TCP / raw socket:        {raw / tcp_:.2f} by wall, {raw_cpu / tcp_cpu:.2f} by CPU "
          "(target >= 0.5)")
    print(f"TCP without the twin's compute / raw socket: {raw / max(tcp_ - twin_, 1e-9):.2f} by "
          f"wall, {raw_cpu / max(tcp_cpu - twin_cpu, 1e-9):.2f} by CPU")


if __name__ == "__main__":
    main()
