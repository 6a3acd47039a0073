"""Crossbar MVM throughput: a 1024x128 array (a 1024x64 signed matrix as differential pairs)
and a batch of 1000 input vectors, through the in-process twin, the driver over TCP and
over a pty to `labpnn sim crossbar` (a separate process), each with float32 voltages and
currents and with int8 DAC / int16 ADC codes (`format`), against a bare NumPy matmul of the
same shapes and the raw loopback rate of the float32 request and reply bytes. Then the
bytes one pass of 10,000 MNIST images through the first unit of mnist-memristor (785
inputs, 64 outputs = 128 columns, batches of 500) puts on the wire, counted by a proxy,
and their time at 921,600 baud (8N1: 92,160 bytes/s). The driver also talks to a
*precomputed board*, a stand-in local to this benchmark: the twin's SCPI server whose MVMs
answer from memory (precomputed_board()), so the link is all real and the board's compute
free, as on a board that computes in analog; beside it, the raw round trip after the input
scaling every driver does first (the ceiling of a driver that scales in NumPy). Two rows time
the same NumPy matmul in a new process whose first large product it is, with and without the
twin's settle_blas() before it (see its docstring).

Wall time is what the targets are about; CPU time (this process, plus the simulator
process for the wire paths, whose share is shown; Linux) is the work done, which a busy
machine inflates far less.
Targets: in-process twin >= 0.5 x NumPy; TCP >= 0.5 x raw socket (float32 bytes).
Run: python benchmarks/bench_crossbar.py [--repeats N] [--quick]
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

from labpnn.drivers.crossbar import CrossbarBoard, _voltages
from labpnn.instruments.crossbar_mapping import abs_max
from labpnn.sim_devices.crossbar import CrossbarPhysics, SimCrossbarBoard, settle_blas
from labpnn.sim_devices.scpi_server import CrossbarSCPI, TcpServer

ROWS, COLS, BATCH = 1024, 128, 1000
BAUD_BYTES_PER_S = 921_600 / 10  # 8 data bits, a start and a stop bit
MNIST_IMAGES, MNIST_INPUTS, MNIST_OUT, MNIST_BATCH = 10_000, 785, 64, 500


def no_other_cpu() -> float:
    return 0.0


def cpu_of(pid: int) -> Callable[[], float]:
    """Seconds of CPU the threads of process `pid` have used so far: Linux schedstat, in ns
    (/proc/<pid>/stat counts 10 ms ticks, too coarse for a pass of a few ms); 0 elsewhere."""
    def read() -> float:
        total = 0
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            return 0.0
        return total / 1e9
    return read


def timed(fns: dict[str, tuple[Callable[[], object], Callable[[], float]]], repeats: int
          ) -> dict[str, tuple[float, float, float, float]]:
    """{name: (best, median wall, mean CPU, of it the other process's) seconds} over
    `repeats` runs after a warm-up; each fn comes with the CPU clock of the other process it
    drives. The functions take turns, so a busy machine slows them alike."""
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in fns}
    for fn, _ in fns.values():
        fn()
    for _ in range(repeats):
        for name, (fn, other_cpu) in fns.items():
            cpu, other, wall = time.process_time(), other_cpu(), time.perf_counter()
            fn()
            wall, other = time.perf_counter() - wall, other_cpu() - other
            runs[name].append((wall, time.process_time() - cpu + other, other))
    return {name: (min(w for w, _, _ in r), statistics.median(w for w, _, _ in r),
                   statistics.mean(c for _, c, _ in r), statistics.mean(o for _, _, o in r))
            for name, r in runs.items()}


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


def scaled_raw(x: np.ndarray) -> Callable[[], None]:
    """The raw float32 round trip after the work any driver of this board does to the inputs
    first: the per-vector abs-max and the voltages (x scaled to the limit): the ceiling of a
    driver over the raw socket, the protocol free."""
    round_trip = raw_socket(len(f"MEAS:MVM? {BATCH},0,{ROWS},0,{COLS},#7") + 7 + x.nbytes + 1,
                            10 + BATCH * COLS * 4)

    def run() -> None:
        _voltages(x, np.float32(0.2) / abs_max(x))
        round_trip()
    return run


@contextmanager
def board_process(*args: str, precomputed: bool = False
                  ) -> Iterator[tuple[str, Callable[[], float]]]:
    """`labpnn sim crossbar ARGS` (precomputed: precomputed_board()) in a subprocess: its VISA
    resource and its CPU clock."""
    command = ([__file__, "--precomputed-board"] if precomputed
               else ["-m", "labpnn", "sim", "crossbar", *args])
    proc = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().split()[2], cpu_of(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def driver(*args: str, precomputed: bool = False, **options
           ) -> Iterator[tuple[CrossbarBoard, Callable[[], float]]]:
    """The driver connected to `labpnn sim crossbar ARGS` in a subprocess (precomputed: to
    precomputed_board() instead), and the subprocess's CPU clock."""
    with board_process(*args, precomputed=precomputed) as (resource, cpu):
        with CrossbarBoard(resource=resource, timeout_ms=60000, **options) as board:
            yield board, cpu


def one_block(board: CrossbarBoard, fmt: str, x: np.ndarray) -> Callable[[], object]:
    """A matmul of x sent as one block (no pipeline)."""
    def run() -> object:
        pipelined = board.options.pipeline_block_bytes
        board.options.pipeline_block_bytes = board.options.max_block_bytes
        try:
            return board.matmul(x, format=fmt)
        finally:
            board.options.pipeline_block_bytes = pipelined
    return run


def from_memory(compute: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """`compute(x, r0, c0, cols, ...)` run once per shape, place and first input vector, its
    answer given again after that."""
    answers: dict[tuple, np.ndarray] = {}

    def answer(x: np.ndarray, r0: int, c0: int, cols: int, *more) -> np.ndarray:
        key = (x.shape, r0, c0, cols, x[0, :16].tobytes())
        if key not in answers:
            answers[key] = compute(x, r0, c0, cols, *more)
        return answers[key]
    return answer


def precomputed_board() -> None:
    """A stand-in for the board's compute, local to this benchmark (not a simulator): the
    twin's SCPI server on TCP, its parser, sessions, framing and sockets all real, whose
    physics answers each MVM (`MEAS:MVM?` float32, `MEAS:MVM:CODE?` codes) from memory: the
    twin's own answer to the first request of that shape and first input vector. Every pass
    here sends the same inputs, so the answers are the twin's; the product costs nothing,
    which leaves what the link costs by itself, as a board that computes in analog leaves
    it. Prints its address as `labpnn sim crossbar` does."""
    physics = CrossbarPhysics(seed=0)
    for name in ("mvm", "mvm_codes"):
        setattr(physics, name, from_memory(getattr(physics, name)))
    server = TcpServer(CrossbarSCPI(physics))
    print(f"listening on {server.address}", flush=True)
    threading.Event().wait()


def inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The signed weights, the input batch and the conductances of the NumPy baseline."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((ROWS, COLS // 2)).astype(np.float32)
    x = rng.standard_normal((BATCH, ROWS)).astype(np.float32)
    g = rng.uniform(1e-6, 40e-6, (ROWS, COLS)).astype(np.float32)
    return w, x, g


def fresh_matmul(settle: bool, repeats: int) -> tuple[float, float, float, float]:
    """(best, median wall, mean CPU, 0) of the NumPy matmul in a new process whose first
    large product it is; settle: after settle_blas()."""
    out = subprocess.run([sys.executable, __file__, "--fresh-matmul", str(int(settle)),
                          "--repeats", str(repeats)], capture_output=True, text=True, check=True)
    best, median, cpu = map(float, out.stdout.split())
    return best, median, cpu, 0.0


def counting_proxy(target: str) -> tuple[str, list[int]]:
    """A loopback TCP proxy in front of the VISA resource `target`: its own resource and
    [bytes to the board, bytes from it], counted as they pass."""
    _, host, port, _ = target.split("::")
    listener = socket.create_server(("127.0.0.1", 0))
    counts = [0, 0]

    def pump(src: socket.socket, dst: socket.socket, index: int) -> None:
        while data := src.recv(1 << 16):
            counts[index] += len(data)
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        client, _ = listener.accept()
        board = socket.create_connection((host, int(port)))
        for a, b, i in ((client, board, 0), (board, client, 1)):
            a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=pump, args=(a, b, i), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return f"TCPIP::127.0.0.1::{listener.getsockname()[1]}::SOCKET", counts


def mnist_pass_bytes(fmt: str) -> tuple[int, int]:
    """(bytes to the board, bytes back) for one pass of the MNIST test set through a
    785 -> 64 unit in batches of 500, as the driver sends them (`fmt` float32 or codes);
    without re-runs of clipped vectors (bound management), which depend on the data."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((MNIST_INPUTS, MNIST_OUT)).astype(np.float32)
    x = rng.random((MNIST_BATCH, MNIST_INPUTS), dtype=np.float32)
    with board_process("--tcp", "127.0.0.1:0", "--rows", str(MNIST_INPUTS)) as (resource, _):
        proxied, counts = counting_proxy(resource)
        with CrossbarBoard(resource=proxied, timeout_ms=60000, bound_retries=0) as board:
            board.program_weights(w)
            before = list(counts)
            for _ in range(MNIST_IMAGES // MNIST_BATCH):
                board.matmul(x, format=fmt)
            time.sleep(0.2)  # the proxy's last bytes
            return counts[0] - before[0], counts[1] - before[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 repeats, no pty rows")
    parser.add_argument("--precomputed-board", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fresh-matmul", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precomputed_board:
        return precomputed_board()
    repeats = 3 if args.quick else args.repeats
    w, x, g = inputs()
    if args.fresh_matmul is not None:
        if args.fresh_matmul:
            settle_blas()
        return print(*timed({"": (lambda: x @ g, no_other_cpu)}, repeats)[""][:3])

    with SimCrossbarBoard(seed=0) as twin:
        twin.program_weights(w)
        rows = timed({"NumPy matmul (1000x1024 @ 1024x128)": (lambda: x @ g, no_other_cpu),
                      "in-process twin, float32": (lambda: twin.matmul(x), no_other_cpu),
                      "in-process twin, codes": (lambda: twin.matmul(x, format="codes"),
                                                 no_other_cpu)}, repeats)
    rows["NumPy matmul, a fresh process"] = fresh_matmul(False, repeats)
    rows["NumPy matmul, a fresh process, settled"] = fresh_matmul(True, repeats)
    head = len(f"MEAS:MVM? {BATCH},0,{ROWS},0,{COLS},#7") + 7
    with driver("--tcp", "127.0.0.1:0") as (tcp, server_cpu):
        tcp.program_weights(w)

        rows.update(timed({
            "raw loopback socket, float32 bytes":
                (raw_socket(head + x.nbytes + 1, 10 + BATCH * COLS * 4), no_other_cpu),
            "driver over TCP, float32, one block": (one_block(tcp, "float32", x), server_cpu),
            "driver over TCP, float32, pipelined": (lambda: tcp.matmul(x), server_cpu),
            "driver over TCP, codes, one block": (one_block(tcp, "codes", x), server_cpu),
            "driver over TCP, codes, pipelined": (lambda: tcp.matmul(x, format="codes"),
                                                  server_cpu)}, repeats))
    with driver(precomputed=True) as (pre, server_cpu):  # the link alone: the product is free
        pre.program_weights(w)
        name = "driver over TCP to a precomputed board"
        rows.update(timed({
            "raw loopback socket, float32 bytes (again)":
                (raw_socket(head + x.nbytes + 1, 10 + BATCH * COLS * 4), no_other_cpu),
            "raw loopback socket, codes bytes":
                (raw_socket(head + x.nbytes // 4 + 1, 10 + BATCH * COLS * 2), no_other_cpu),
            "raw loopback socket + the driver's input scaling": (scaled_raw(x), no_other_cpu),
            f"{name}, float32, one block": (one_block(pre, "float32", x), server_cpu),
            f"{name}, float32, pipelined": (lambda: pre.matmul(x), server_cpu),
            f"{name}, codes, one block": (one_block(pre, "codes", x), server_cpu),
            f"{name}, codes, pipelined": (lambda: pre.matmul(x, format="codes"), server_cpu)},
            repeats))
    if not args.quick:
        with driver("--pty") as (pty, server_cpu):
            pty.program_weights(w)
            rows.update(timed({
                "driver over a pty, float32": (lambda: pty.matmul(x), server_cpu),
                "driver over a pty, codes": (lambda: pty.matmul(x, format="codes"), server_cpu)},
                max(3, repeats // 5)))

    print(f"crossbar MVM throughput: array {ROWS}x{COLS}, batch {BATCH}; {repeats} runs each; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print(f"{'path':58s} {'best wall':>10s} {'median':>10s} {'CPU':>10s} {'of it board':>11s} "
          f"{'vectors/s':>11s}")
    for name, (best, median, cpu, board) in rows.items():
        print(f"{name:58s} {best * 1e3:7.2f} ms {median * 1e3:7.2f} ms {cpu * 1e3:7.2f} ms "
              f"{board * 1e3:8.2f} ms {BATCH / best:11,.0f}")
    numpy_ = rows["NumPy matmul (1000x1024 @ 1024x128)"]
    raw = rows["raw loopback socket, float32 bytes"]
    raw_again = rows.pop("raw loopback socket, float32 bytes (again)")
    raw_codes = rows["raw loopback socket, codes bytes"]
    scaled = rows["raw loopback socket + the driver's input scaling"]
    print()
    for name, (best, _, cpu, _) in ((k, rows[k]) for k in rows if k.startswith("in-process")):
        print(f"{name} / NumPy: {numpy_[0] / best:.2f} by wall, {numpy_[2] / cpu:.2f} by CPU "
              "(target >= 0.5)")
    for name, (best, _, cpu, _) in ((k, rows[k]) for k in rows if k.startswith("driver over TCP")):
        base = raw_again if "precomputed" in name else raw  # measured alongside
        extra = (f"; {raw_codes[0] / best:.2f} / {raw_codes[2] / cpu:.2f} of the raw codes bytes"
                 if "precomputed" in name and "codes" in name else "")
        if name.endswith("float32, one block") and "precomputed" in name:
            extra = f"; the input scaling alone leaves {base[2] / scaled[2]:.2f} by CPU"
        print(f"{name} / raw socket: {base[0] / best:.2f} by wall, {base[2] / cpu:.2f} by CPU "
              f"(target >= 0.5){extra}")

    print(f"\none pass of {MNIST_IMAGES:,} MNIST images through a {MNIST_INPUTS} -> {MNIST_OUT} "
          f"unit ({2 * MNIST_OUT} columns), batches of {MNIST_BATCH}:\n")
    print(f"{'format':8s} {'to the board':>14s} {'back':>12s} {'total':>14s} {'at 921,600 baud':>16s}")
    for fmt in ("float32", "codes"):
        sent, back = mnist_pass_bytes(fmt)
        total = sent + back
        print(f"{fmt:8s} {sent / 1e6:11.2f} MB {back / 1e6:9.2f} MB {total / 1e6:11.2f} MB "
              f"{total / BAUD_BYTES_PER_S / 60:11.2f} min")


if __name__ == "__main__":
    main()
