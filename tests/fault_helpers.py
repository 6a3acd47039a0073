"""Fault injection for the engine tests: tiny fault recipes, and a crossbar twin served on TCP
that a test can kill, restart (a fresh board: its programming lost), hang, slow down or make
reply garbage, as a real board on a flaky link would."""

from __future__ import annotations

import copy
import socket
import threading
import time
from pathlib import Path

import numpy as np

from engine_helpers import TINY, write_yaml
from labpnn.bench import Bench
from labpnn.recipe import Recipe, parse_recipe
from labpnn.runlog import RunReader
from labpnn.sim_devices.crossbar import CrossbarPhysics
from labpnn.sim_devices.scpi_server import CrossbarSCPI, Message, TcpServer

STEPS = 6
FAST = {"dataset": {"name": "digits", "n_train": 240, "n_test": 100},
        "pib": {"steps": STEPS, "batch_size": 64}, "measure": {"batch_size": 40}, "readout": {"steps": 30}}
BOARD = {"seed": 1, "rows": 96, "cols": 48}  # unit 0 needs 65 rows x 32 columns


def fault_recipe(faults: dict | None = None, **changes) -> Recipe:
    data = copy.deepcopy(TINY)
    data.update(copy.deepcopy(FAST))
    data.update(changes)
    data["faults"] = {"backoff_s": 0.1, **(faults or {})}
    return parse_recipe(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FlakyFront(CrossbarSCPI):
    """The board's SCPI front with switchable misbehaviour:
    mode None (healthy), "hung" (reads commands, never executes or answers them), "garbage"
    (MVM replies are malformed blocks), "garbage-idn" (*IDN? answers a line that is no identity);
    mvm_delay_s slows every MVM down (a slow instrument, to catch a run mid-measurement)."""

    def __init__(self, physics: CrossbarPhysics):
        super().__init__(physics)
        self.mode: str | None = None
        self.mvm_delay_s = 0.0

    def handle(self, item, session=None):
        if self.mode == "hung":
            return None
        text = item.text.upper() if isinstance(item, Message) else ""
        if self.mvm_delay_s and text.startswith("MEAS:MVM"):
            time.sleep(self.mvm_delay_s)
        if self.mode == "garbage-idn" and text.startswith("*IDN?"):
            return b"READY\n"
        reply = super().handle(item, session)
        if self.mode == "garbage" and reply is not None and text.startswith("MEAS:MVM"):
            return b"#210" + b"\x7f" * 10 + b"\n"  # a block of 10 bytes: not what was asked
        return reply


class Board:
    """A crossbar twin on TCP at a fixed port. kill() drops the server and every connection
    (a cut link, a crashed instrument); start() serves a fresh twin on the same port."""

    def __init__(self, **physics):
        self.port = free_port()
        self.physics_options = {**BOARD, **physics}
        self.resource = f"TCPIP::127.0.0.1::{self.port}::SOCKET"
        self.server: TcpServer | None = None
        self.front: FlakyFront | None = None
        self.start()

    @property
    def physics(self) -> CrossbarPhysics:
        return self.front.physics

    def start(self) -> None:
        self.front = FlakyFront(CrossbarPhysics(**self.physics_options))
        for _ in range(50):
            try:
                self.server = TcpServer(self.front, "127.0.0.1", self.port)
                return
            except OSError:  # the port is still held by the previous server's sockets
                time.sleep(0.05)
        raise RuntimeError(f"cannot serve on port {self.port} again")

    def start_later(self, delay_s: float) -> threading.Thread:
        thread = threading.Thread(target=lambda: (time.sleep(delay_s), self.start()), daemon=True)
        thread.start()
        return thread

    def kill(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def bench_file(self, tmp_path: Path, timeout_ms: int = 1000) -> Path:
        return write_yaml(tmp_path / "bench.yaml", {"instruments": {"crossbar": {
            "driver": "crossbar", "resource": self.resource, "options": {"timeout_ms": timeout_ms}}}})

    def bench(self, tmp_path: Path, timeout_ms: int = 1000) -> Bench:
        return Bench.load(self.bench_file(tmp_path, timeout_ms))


class SilentServer:
    """Accepts connections and reads everything, never answers: an instrument that hangs."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.resource = f"TCPIP::127.0.0.1::{self.port}::SOCKET"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        try:
            while conn.recv(1 << 16):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for conn in self._conns:
            conn.close()


def on_measure(run, unit: int, split: str, at_least: int, action) -> None:
    """Call action() once, from the run's thread, when unit's split has measured at_least rows."""
    fired = []

    def watch(ev):
        if (ev.kind == "measure" and not fired and ev.unit == unit and ev.data["split"] == split
                and ev.data["done"] >= at_least):
            fired.append(True)
            action()
    run.bus.subscribe(watch)


def messages(reader: RunReader, kind: str | None = None) -> list[str]:
    return [e["message"] for e in reader.events if kind is None or e["kind"] == kind]


def assert_every_step_once(reader: RunReader, steps: int = STEPS) -> None:
    """Each unit's info plane holds every step of each revision exactly once, in order."""
    for u in reader.units:
        info = u.info_plane
        assert info.size, f"unit {u.index} has no info-plane rows"
        for rev in sorted(set(info["revision"].tolist())):
            assert info["step"][info["revision"] == rev].tolist() == list(range(steps)), (u.index, rev)


def assert_checkpoints_once(reader: RunReader) -> None:
    """Each phase completed once; only a deployment is redone (after a resume, the board is
    read back and reprogrammed when it no longer holds the unit)."""
    marks = [m for m in reader.checkpoints if m[2] != "deployed"]
    assert len(marks) == len(set(marks)), reader.checkpoints


def assert_features_complete(reader: RunReader, revision: int = 0) -> None:
    for u in reader.units:
        for split, n in (("train", reader.layout.n_train), ("test", reader.layout.n_test)):
            assert u.feature_rows(split, revision) == n, (u.index, split)
            assert np.isfinite(u.features(split, revision)).all(), (u.index, split)
