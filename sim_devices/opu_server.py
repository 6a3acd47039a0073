"""The OPU twin on the network: an OPU server speaking labpnn.instruments.opu_protocol over TCP.

`labpnn sim opu --tcp 127.0.0.1:PORT` (port 0 picks a free one) prints
`listening on tcp://HOST:PORT` and serves until SIGINT or SIGTERM (exit 0). Each connection
gets its own twin, built on `open` from the client's n_components and max_n_features and the
server's seed and settings, so every connection sees the same R. A malformed request is
answered with an error message; it never stops the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import socket
import socketserver
import threading
from typing import Any

import numpy as np
from pydantic import ValidationError

from labpnn.instruments.opu_protocol import PROTOCOL_VERSION, ProtocolError, recv_message, send_message
from labpnn.errors import LabpnnError, TransportError
from labpnn.sim_devices.opu import SimOPU, SimOPUSettings


MAX_CONNECTIONS = 8  # clients served at once; more are closed on arrival
MAX_REQUEST_BYTES = 64 << 20  # payload of one request (a transform batch)
MAX_TWIN_BYTES = 1 << 30  # the transmission matrices of all connections' twins together
STALL_TIMEOUT = 10.0  # s a started message may pause before the connection is dropped


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 1 << 20 else f"{n} B"


class OPUServer(socketserver.ThreadingTCPServer):
    """Serves OPU twins; `with OPUServer(port=0) as server:` runs it in a background thread.

    Bounded: at most `max_connections` clients, requests of at most `max_request_bytes`, a
    message that stalls for `stall_timeout` s drops its connection, and the twins' matrices
    together take at most `max_twin_bytes`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 max_connections: int = MAX_CONNECTIONS, max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_twin_bytes: int = MAX_TWIN_BYTES, stall_timeout: float = STALL_TIMEOUT,
                 **settings: Any):
        self.settings = SimOPUSettings(**settings)
        self.max_connections, self.max_request_bytes = max_connections, max_request_bytes
        self.max_twin_bytes, self.stall_timeout = max_twin_bytes, stall_timeout
        self._thread: threading.Thread | None = None
        self._budget = threading.Lock()
        self._connections = 0
        self.twin_bytes = 0  # held by the twins of connected clients
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), _Session)

    def verify_request(self, request, client_address) -> bool:
        with self._budget:
            if self._connections >= self.max_connections:
                return False  # closed by the caller
            self._connections += 1
            return True

    def reserve(self, old: int, new: int) -> None:
        """Trade a twin of `old` matrix bytes for one of `new`; ValueError past the budget."""
        with self._budget:
            if self.twin_bytes - old + new > self.max_twin_bytes:
                raise ValueError(f"a twin of {_size(new)} would take the server past its "
                                 f"{_size(self.max_twin_bytes)} for all clients' twins "
                                 f"({_size(self.twin_bytes)} in use)")
            self.twin_bytes += new - old

    def finish_session(self, twin_bytes: int) -> None:
        with self._budget:
            self._connections -= 1
            self.twin_bytes -= twin_bytes

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"tcp://{host}:{port}"

    def start(self) -> OPUServer:
        self._thread = threading.Thread(target=self.serve_forever, name="opu-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __enter__(self) -> OPUServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Session(socketserver.BaseRequestHandler):
    """One client connection: read a request, answer it, until the client leaves."""

    server: OPUServer
    twin: SimOPU | None = None

    def finish(self) -> None:
        self.server.finish_session(self._twin_bytes())

    def _twin_bytes(self) -> int:
        return 0 if self.twin is None else 8 * self.twin.n_components * self.twin.max_n_features

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = self.server
        while True:
            try:
                header, array = recv_message(sock, server.max_request_bytes, server.stall_timeout)
            except ProtocolError as exc:
                if not self._answer(sock, {"ok": False, "error": f"malformed message: {exc}"}) or exc.fatal:
                    return
                continue
            except OSError:  # the client left or stalled (ConnectionError, TimeoutError)
                return
            try:
                reply, out = self.dispatch(header, array)
                reply = {"ok": True, **reply}
            except (ValueError, LabpnnError) as exc:
                reply, out = {"ok": False, "error": str(exc)}, None
            except (KeyError, TypeError) as exc:
                reply, out = {"ok": False, "error": f"malformed {header.get('op')!r} request: {exc!r}"}, None
            except Exception as exc:  # noqa: BLE001 - one bad request must not kill the server
                reply, out = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}, None
            if not self._answer(sock, reply, out):
                return

    @staticmethod
    def _answer(sock: socket.socket, reply: dict, array: np.ndarray | None = None) -> bool:
        try:
            send_message(sock, reply, array)
            return True
        except OSError:
            return False

    def dispatch(self, header: dict, array: np.ndarray | None) -> tuple[dict, np.ndarray | None]:
        """Run one request on this connection's twin: (reply fields, reply array or None)."""
        op = header.get("op")
        if op == "open":
            dims = (int(header["n_components"]), int(header["max_n_features"]))
            if self.twin is None or (self.twin.n_components, self.twin.max_n_features) != dims:
                if min(dims) < 1:
                    raise ValueError(f"n_components and max_n_features must be positive, got {dims}")
                self.server.reserve(self._twin_bytes(), 8 * dims[0] * dims[1])
                try:
                    twin = SimOPU(*dims, **self.server.settings.model_dump())
                except BaseException:
                    self.server.reserve(8 * dims[0] * dims[1], self._twin_bytes())
                    raise
                self.twin = twin
            return {**self.twin.open(), "protocol": PROTOCOL_VERSION}, None
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; known: open, {', '.join(OPS)}")
        twin = self.twin
        if twin is None:
            if op == "identify":
                return {"identity": "labpnn OPU server (no twin opened yet)"}, None
            raise ValueError(f"{op!r} before 'open'")
        match op:
            case "transform":
                if array is None:
                    raise ValueError("transform needs the input array as payload")
                return {}, twin.transform(array)
            case "fit":
                return twin.fit(int(header["n_features"]), array), None
            case "identify":
                return {"identity": twin.identity()}, None
            case "snapshot":
                return {"snapshot": twin.snapshot()}, None
            case "self_test":
                return {"health": dataclasses.asdict(twin.self_test())}, None
            case "check_fault":
                twin.check_fault(header["kind"], **header.get("params", {}))
            case "inject_fault":
                twin.inject_fault(header["kind"], **header.get("params", {}))
            case "close":
                twin.close()
            case "reset":
                twin.reset()
            case "clear_faults":
                twin.clear_faults()
        return {}, None


OPS = ("close", "fit", "transform", "identify", "snapshot", "self_test", "reset",
       "check_fault", "inject_fault", "clear_faults")


def _bind_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--tcp {text!r}: expected [HOST:]PORT, e.g. 127.0.0.1:0")
    return host.strip("[]") or "127.0.0.1", int(port)


def cli_main(argv: list[str] | None = None) -> int:
    """`labpnn sim opu`: serve the OPU twin until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="labpnn sim opu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tcp", default="127.0.0.1:0", metavar="[HOST:]PORT",
                        help="where to listen (default 127.0.0.1:0, a free loopback port)")
    parser.add_argument("--seed", type=int, default=0, help="seed of R and of the noise")
    parser.add_argument("--exposure-us", type=float, default=400.0, help="base exposure")
    parser.add_argument("--frametime-us", type=float, default=0.0, help="time per input frame")
    args = parser.parse_args(argv)
    try:
        host, port = _bind_address(args.tcp)
        settings = SimOPUSettings(seed=args.seed, exposure_us=args.exposure_us,
                                  frametime_us=args.frametime_us).model_dump()
    except (ValueError, ValidationError) as exc:
        parser.error(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = OPUServer(host, port, **settings)
    except OSError as exc:
        raise TransportError(f"cannot listen on {host}:{port}: {exc}") from None
    with server:
        print(f"listening on {server.address}", flush=True)
        stop.wait()
    return 0
