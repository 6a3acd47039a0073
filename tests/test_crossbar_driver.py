"""The crossbar driver: real PyVISA sessions against the twin over TCP and a pty, recorded
command/response pairs replayed without a server, and (opt-in) a real board."""

import json
import os
import re
import socket
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import pyvisa

from conftest import hardware_option
from labpnn.drivers import scpi
from labpnn.drivers.crossbar import CrossbarBoard
from labpnn.instruments.scpi import (CommandError, DataOutOfRange, DeviceSpecificError, QueueOverflow,
                                 SettingsConflict, scpi_error)
from labpnn.errors import DeviceError, TransportError
from labpnn.protocols import CrossbarArray
from labpnn.sim_devices.crossbar import CrossbarPhysics, SimCrossbarBoard
from labpnn.sim_devices.scpi_server import serve_pty, serve_tcp

RECORDED = Path(__file__).parent / "recorded"
# Below the calibrated noise, so that a mapping or tiling error shows through the noise.
TWIN = dict(seed=2, rows=32, cols=16, read_noise_rel=0.05, prog_tolerance=0.03)


@pytest.fixture
def tcp_twin():
    physics = CrossbarPhysics(**TWIN)
    server, address = serve_tcp(physics)
    yield physics, address, server
    server.close()


@pytest.fixture
def board(tcp_twin):
    physics, address, _ = tcp_twin
    with CrossbarBoard(resource=address, timeout_ms=3000) as b:
        yield b, physics


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("resource", ["ASRL/dev/ttyUSB0::INSTR", "asrl1::instr",
                                      "TCPIP::127.0.0.1::5025::SOCKET", "TCPIP0::board.lab::5025::SOCKET"])
def test_resource_strings_that_are_accepted(resource):
    CrossbarBoard.check_resource(resource)
    assert CrossbarBoard(resource=resource).resource == resource


@pytest.mark.parametrize("resource", [None, "", "GPIB0::5::INSTR", "TCPIP::host::INSTR",
                                      "TCPIP::host::port::SOCKET", "/dev/ttyUSB0"])
def test_resource_strings_that_are_refused(resource):
    with pytest.raises(ValueError, match="crossbar resource"):
        CrossbarBoard.check_resource(resource)


def test_construction_touches_nothing_and_options_are_validated():
    board = CrossbarBoard(name="xb", resource="TCPIP::127.0.0.1::1::SOCKET", timeout_ms=200)
    assert isinstance(board, CrossbarArray) and not board.simulated and not board.connected
    assert board.array_shape == (0, 0)
    with pytest.raises(TransportError, match=r"xb: link lost during '\*CLS'"):
        board.connect()  # nothing listens on port 1
    assert not board.connected
    with pytest.raises(Exception, match="extra"):
        CrossbarBoard(resource="TCPIP::127.0.0.1::1::SOCKET", speed=3)


def test_scpi_codes_map_to_typed_errors():
    assert type(scpi_error(-113, "x")) is CommandError
    assert type(scpi_error(-221, "x")) is SettingsConflict
    assert type(scpi_error(-222, "x")) is DataOutOfRange
    assert type(scpi_error(-310, "x")) is DeviceSpecificError
    error = scpi_error(-350, "Queue overflow", instrument="xb", command="OUTP ON")
    assert type(error) is QueueOverflow and error.code == -350 and isinstance(error, DeviceError)
    assert str(error) == "xb: 'OUTP ON' refused: SCPI error -350, Queue overflow"


# ---------------------------------------------------------------- over TCP


def test_session_over_tcp(board):
    b, physics = board
    assert b.identity() == "LABPNN,XBAR-SIM,0001,1.0" and b.array_shape == (32, 16)
    sock = b.scpi._sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert b.self_test().ok
    snap = b.snapshot()
    assert snap["array_shape"] == [32, 16] and snap["g_range"] == [1e-6, 40e-6]
    assert snap["adc_bits"] == 10 and snap["simulated"] is False and json.dumps(snap)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 6)).astype(np.float32)
    x = rng.standard_normal((30, 20)).astype(np.float32)
    result = b.program_weights(w)
    assert result["g_read"].shape == (20, 12)
    np.testing.assert_allclose(result["g_read"], physics.read(0, 0, 20, 12)[:, :12], atol=8e-6)
    y = b.matmul(x)
    assert y.shape == (30, 6) and np.linalg.norm(y - x @ w) < 0.2 * np.linalg.norm(x @ w)
    assert physics.output is True


def test_settings_are_declarative_controls(board):
    b, physics = board
    b.v_limit = 0.1
    b.g_range = (2e-6, 30e-6)
    b.adc_bits = 12
    assert (physics.v_limit, physics.g_range, physics.adc_bits) == (0.1, (2e-6, 30e-6), 12)
    assert (b.v_limit, b.g_range, b.adc_bits, b.prog_iterations) == (0.1, (2e-6, 30e-6), 12, 30)
    result = b.program_weights(np.array([[1.0, -1.0]], np.float32))
    assert result["g_target"].max() == pytest.approx(30e-6) and result["g_target"].min() == pytest.approx(2e-6)
    with pytest.raises(DataOutOfRange) as info:
        b.v_limit = 3.0
    assert info.value.code == -222 and "SOUR:VOLT:LIM 3.0" in str(info.value)
    assert physics.v_limit == 0.1


def test_options_are_applied_at_connect(tcp_twin):
    physics, address, _ = tcp_twin
    with CrossbarBoard(resource=address, v_limit=0.15, prog_tolerance=0.02, adc_range=1e-4):
        assert (physics.v_limit, physics.prog_tolerance, physics.adc_range) == (0.15, 0.02, 1e-4)
        assert physics.output is False


def test_out_of_range_conductances_are_refused_and_nothing_is_programmed(board):
    b, physics = board
    b.program_conductances(0, 0, np.full((2, 2), 20e-6, np.float32))
    before = physics.conductance()[:2, :2].copy()
    b.output = True
    with pytest.raises(DataOutOfRange) as info:
        b.program_conductances(0, 0, np.array([[20e-6, 5e-3]], np.float32))
    assert info.value.code == -222 and "PROG:COND" in str(info.value)
    np.testing.assert_array_equal(physics.conductance()[:2, :2], before)
    assert b.read_conductances(0, 0, 2, 2).shape == (2, 2)
    assert physics.output is False  # left in the safe state


def test_out_of_range_voltages_are_refused_and_nothing_is_applied(board):
    b, physics = board
    b.output = True
    with pytest.raises(DataOutOfRange, match="exceeds the limit"):
        b.mvm_voltages(0, 0, 4, np.array([[0.1, 0.5]], np.float32))
    assert physics.applied_vectors == 0 and physics.output is False
    with pytest.raises(SettingsConflict) as info:  # output now off
        b.mvm_voltages(0, 0, 4, np.array([[0.1, 0.1]], np.float32))
    assert info.value.code == -221
    b.output = True
    assert b.mvm_voltages(0, 0, 4, np.array([[0.1, 0.1]], np.float32)).shape == (1, 4)
    assert physics.applied_vectors == 1


def test_queued_errors_surface_with_the_oldest_first(tcp_twin):
    physics, address, server = tcp_twin
    with CrossbarBoard(resource=address) as b:
        for _ in range(20):
            b.scpi.write("STRAY", check=False)  # into this session's queue
        with pytest.raises(CommandError) as info:
            b.prog_tolerance = 0.05
        assert info.value.code == -113 and "15 more queued" in str(info.value)
        b.prog_tolerance = 0.05  # the queue was drained


def test_tiling_over_the_wire_matches_the_in_process_twin(board):
    b, _ = board
    rng = np.random.default_rng(3)
    w = rng.standard_normal((50, 20)).astype(np.float32)  # 5 groups on a 32x16 array
    x = rng.standard_normal((25, 50)).astype(np.float32)
    b.program_weights(w)
    with SimCrossbarBoard(**TWIN) as twin:
        twin.program_weights(w)
        expected = twin.matmul(x)
    y = b.matmul(x)
    scale = np.linalg.norm(x @ w)
    assert np.linalg.norm(y - x @ w) < 0.2 * scale and np.linalg.norm(y - expected) < 0.3 * scale
    assert b.read_weights()["weights"].shape == (50, 20)


def test_large_batches_are_split_into_blocks(tcp_twin):
    physics, address, _ = tcp_twin
    with CrossbarBoard(resource=address, max_block_bytes=1024) as b:  # 12 vectors of 20 rows
        b.program_weights(np.eye(20, 4, dtype=np.float32))
        x = np.random.default_rng(0).standard_normal((100, 20)).astype(np.float32)
        y = b.matmul(x)
        assert np.linalg.norm(y - x[:, :4]) < 0.2 * np.linalg.norm(x[:, :4])
    assert physics.applied_vectors == 100


def test_an_exception_inside_with_leaves_the_output_off(tcp_twin):
    physics, address, _ = tcp_twin
    with pytest.raises(RuntimeError, match="boom"):
        with CrossbarBoard(resource=address) as b:
            b.output = True
            assert physics.output is True
            raise RuntimeError("boom")
    assert physics.output is False and not b.connected


def test_a_lost_link_raises_transport_error_and_safe_state_swallows_it(tcp_twin):
    physics, address, server = tcp_twin
    b = CrossbarBoard(resource=address, timeout_ms=300)
    b.connect()
    b.program_weights(np.ones((2, 2), np.float32))
    server.close()
    with pytest.raises(TransportError, match="crossbar"):
        b.matmul(np.ones((1, 2), np.float32))
    b.safe_state()
    b.close()
    assert not b.connected


def test_a_board_dying_mid_command_is_a_transport_error_not_a_hang(tcp_twin):
    physics, address, server = tcp_twin
    b = CrossbarBoard(resource=address, timeout_ms=300)
    b.connect()
    b.program_weights(np.ones((2, 2), np.float32))

    def die(*args, **kwargs):  # the board drops the link while computing
        for conn in list(server._conns):
            conn.shutdown(socket.SHUT_RDWR)
        raise RuntimeError("power cut")

    physics.mvm = die
    with pytest.raises(TransportError, match=r"link lost during 'MEAS:MVM\? 1,0,2,0,4,': the "
                                             r"board closed the connection"):
        b.matmul(np.ones((1, 2), np.float32))
    b.close()
    assert not b.connected


def test_a_silent_board_times_out():
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        board = CrossbarBoard(resource=f"TCPIP::127.0.0.1::{port}::SOCKET", timeout_ms=200)
        with pytest.raises(TransportError, match=r"no reply to '\*IDN\?' within 200 ms"):
            board.connect()
        assert not board.connected
    finally:
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_session_over_a_pty():
    physics = CrossbarPhysics(seed=4, rows=16, cols=8)
    server, path = serve_pty(physics)
    try:
        with CrossbarBoard(resource=f"ASRL{path}::INSTR", timeout_ms=3000) as b:
            assert b.identity().startswith("LABPNN") and b.array_shape == (16, 8)
            w = np.array([[1.0, -0.5], [0.5, 0.25], [-1.0, 1.0]], np.float32)
            b.program_weights(w)
            x = np.random.default_rng(1).standard_normal((10, 3)).astype(np.float32)
            assert np.linalg.norm(b.matmul(x) - x @ w) < 0.25 * np.linalg.norm(x @ w)
            with pytest.raises(DataOutOfRange):
                b.program_conductances(0, 0, np.full((1, 1), 1.0, np.float32))
            assert b.self_test().ok
        assert physics.output is False
    finally:
        server.close()


# ---------------------------------------------------------------- recorded pairs
# tests/recorded/crossbar_<scenario>.json: what the driver sent and the twin answered while
# running a scenario below. A block is stored as {"f32": [...]}. After a deliberate change of
# the driver or the twin, refresh them with: LABPNN_RERECORD=1 pytest -k recordings_are_current


def session(b: CrossbarBoard, meta: dict):
    """Connect (done), self-test, program a 3x2 matrix, read it back, a 2-vector matmul."""
    w, x = np.array(meta["weights"], np.float32), np.array(meta["x"], np.float32)
    return b.self_test(), b.program_weights(w), b.read_weights(), b.matmul(x)


def refusals(b: CrossbarBoard, meta: dict):
    """Program two cells; then a conductance and a voltage out of range (-222), each with
    the output on before; read the cells back."""
    b.program_conductances(0, 0, np.full((1, 2), 2e-5, np.float32))
    errors = []
    for call in (lambda: b.program_conductances(0, 0, np.array([[2e-5, 1e-3]], np.float32)),
                 lambda: b.mvm_voltages(0, 0, 2, np.array([[0.1], [0.9]], np.float32))):
        b.output = True
        with pytest.raises(DataOutOfRange) as info:
            call()
        errors.append(info.value)
    return errors, b.read_conductances(0, 0, 1, 2)


SCENARIOS = {"session": (session, {"weights": [[0.5, -1.0], [0.25, 0.0], [-0.75, 1.0]],
                                   "x": [[1.0, 0.5, -0.5], [0.0, 2.0, 1.0]]}),
             "refusals": (refusals, {})}
RECORDING_TWIN = dict(seed=7, rows=8, cols=8, read_noise_rel=0.05, prog_tolerance=0.03)


def _encode(parts) -> bytes:
    out = b""
    for part in parts:
        if isinstance(part, str):
            out += part.encode()
        else:
            payload = np.asarray(part["f32"], "<f4").tobytes()
            out += b"#" + str(len(str(len(payload)))).encode() + str(len(payload)).encode() + payload
    return out


def _decode(data: bytes) -> list:
    """Bytes as parts: ASCII text and {"f32": [...]} for each IEEE block."""
    parts, i = [], 0
    for match in re.finditer(rb"#([1-9])", data):
        start = match.start()
        if start < i:
            continue
        digits = data[start + 2:start + 2 + int(match.group(1))]
        if not digits.isdigit():
            continue
        body = start + 2 + len(digits)
        if start > i:
            parts.append(data[i:start].decode())
        parts.append({"f32": np.frombuffer(data[body:body + int(digits)], "<f4").tolist()})
        i = body + int(digits)
    return parts + ([data[i:].decode()] if i < len(data) else [])


def load_recording(name: str) -> list[tuple[str, bytes]]:
    data = json.loads((RECORDED / f"crossbar_{name}.json").read_text())
    return [(kind, _encode(parts)) for e in data["events"] for kind, parts in e.items()]


class Recorder:
    """Wraps a real PyVISA resource and logs the bytes each way (writes blocks through
    write_binary_values, like any non-TCP session)."""

    def __init__(self, resource):
        self._resource, self.events = resource, []
        self.timeout = resource.timeout

    def _log(self, kind: str, data: bytes) -> None:
        if self.events and self.events[-1][0] == kind:
            self.events[-1] = (kind, self.events[-1][1] + data)
        else:
            self.events.append((kind, data))

    def write(self, text):
        self._log("send", text.encode() + b"\n")
        self._resource.write(text)

    def write_binary_values(self, command, values, datatype="f", is_big_endian=False):
        self._log("send", command.encode() + _encode([{"f32": np.asarray(values).tolist()}]) + b"\n")
        self._resource.write_binary_values(command, values, datatype=datatype, is_big_endian=is_big_endian)

    def read(self):
        text = self._resource.read()
        self._log("recv", text.encode() + b"\n")
        return text

    def query(self, text):
        self.write(text)
        return self.read()

    def read_bytes(self, count, chunk_size=None):
        data = self._resource.read_bytes(count, chunk_size=chunk_size)
        self._log("recv", data)
        return data

    def read_termination_context(self, termination):
        return self._resource.read_termination_context(termination)

    def flush(self, mask):
        self._resource.flush(mask)

    def close(self):
        self._resource.close()


class ReplayResource:
    """A PyVISA message-based resource double: checks what the driver writes against a
    recording and answers with the recorded replies; no reply recorded means a timeout."""

    def __init__(self, events: list[tuple[str, bytes]]):
        self.events = deque(events)
        self.sent, self.inbox = bytearray(), bytearray()
        self.timeout = 1000
        self.closed = False

    def _advance(self) -> None:
        while self.events:
            kind, data = self.events[0]
            if kind == "recv":
                self.inbox += data
            elif self.sent[:len(data)] == data:
                del self.sent[:len(data)]
            else:
                assert data.startswith(bytes(self.sent)), \
                    f"driver sent {bytes(self.sent)[:80]!r}, the recording has {data[:80]!r}"
                return
            self.events.popleft()

    def write(self, text: str) -> None:
        self.sent += text.encode() + b"\n"
        self._advance()

    def write_binary_values(self, command, values, datatype="f", is_big_endian=False):
        assert (datatype, is_big_endian) == ("f", False)
        self.sent += command.encode() + _encode([{"f32": np.asarray(values).tolist()}]) + b"\n"
        self._advance()

    def read_bytes(self, count: int, chunk_size=None) -> bytes:
        self._advance()
        if len(self.inbox) < count:
            raise pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_timeout)
        out = bytes(self.inbox[:count])
        del self.inbox[:count]
        return out

    def read(self) -> str:
        self._advance()
        end = self.inbox.find(b"\n")
        return self.read_bytes(end + 1 if end >= 0 else len(self.inbox) + 1)[:-1].decode()

    def query(self, text: str) -> str:
        self.write(text)
        return self.read()

    @contextmanager
    def read_termination_context(self, termination):
        yield

    def flush(self, mask) -> None:
        self.inbox.clear()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def replay(monkeypatch):
    """Install recorded events as what CrossbarBoard opens; returns the fake resource."""
    def install(events):
        fake = ReplayResource(events)
        monkeypatch.setattr(scpi, "open_resource", lambda *args, **kwargs: fake)
        return fake
    return install


def test_recorded_session_replays_without_a_server(replay):
    fake = replay(load_recording("session"))
    run, meta = SCENARIOS["session"]
    with CrossbarBoard(resource="ASRL/dev/ttyUSB0::INSTR") as b:
        assert b.array_shape == (8, 8)
        health, result, back, y = run(b, meta)
    w, x = np.array(meta["weights"]), np.array(meta["x"])
    assert health.ok and np.abs(result["weights"] - w).max() < 0.15 and back["g_read"].shape == (3, 4)
    assert np.linalg.norm(y - x @ w) < 0.3 * np.linalg.norm(x @ w)
    assert fake.closed and not fake.events and not fake.sent  # every recorded exchange happened


def test_recorded_refusals_replay_as_typed_errors(replay):
    fake = replay(load_recording("refusals"))
    with CrossbarBoard(resource="ASRL/dev/ttyUSB0::INSTR") as b:
        errors, read = refusals(b, {})
    assert [e.code for e in errors] == [-222, -222]
    assert "target conductances" in str(errors[0]) and "read voltage 0.9 V" in str(errors[1])
    np.testing.assert_allclose(read, 2e-5, rtol=0.15)
    assert not fake.events


def _replace_reply(events, old: bytes, new: bytes):
    index = next(i for i, (kind, data) in enumerate(events) if kind == "recv" and data == old)
    return events[:index] + [("recv", new)] + events[index + 1:]


def test_a_garbled_reply_names_what_was_expected_and_what_came(replay):
    replay(_replace_reply(load_recording("session"), b"8,8\n", b"8;8\n"))
    board = CrossbarBoard(resource="ASRL/dev/ttyUSB0::INSTR")
    with pytest.raises(DeviceError, match=r"expected two integers .* 'ARR:SIZE\?', got '8;8'"):
        board.connect()
    assert not board.connected


def test_a_short_block_reply_is_refused(replay):
    events = load_recording("session")
    index = next(i for i, (kind, data) in enumerate(events) if kind == "recv" and data.startswith(b"#"))
    replay(events[:index] + [("recv", b"#14" + bytes(4) + b"\n0,\"No error\"\n")])
    with pytest.raises(DeviceError, match=r"expected a block of 32 bytes in reply to 'DIAG:ADC\?'"):
        with CrossbarBoard(resource="ASRL/dev/ttyUSB0::INSTR") as b:
            b.self_test()


def test_a_missing_reply_is_a_transport_error(replay):
    replay(load_recording("session")[:1])  # *IDN? never answered
    with pytest.raises(TransportError, match=r"no reply to '\*IDN\?'"):
        CrossbarBoard(resource="ASRL/dev/ttyUSB0::INSTR").connect()


@pytest.mark.parametrize("name", SCENARIOS)
def test_recordings_are_current(name, monkeypatch):
    """Running the scenario against a fresh twin gives the recorded exchange."""
    opened = []
    monkeypatch.setattr(scpi, "open_resource",
                        lambda *a, _open=scpi.open_resource, **k: opened.append(Recorder(_open(*a, **k)))
                        or opened[-1])
    server, address = serve_tcp(CrossbarPhysics(**RECORDING_TWIN))
    try:
        run, meta = SCENARIOS[name]
        with CrossbarBoard(resource=address) as b:
            run(b, meta)
    finally:
        server.close()
    events = [{kind: _decode(data)} for kind, data in opened[0].events]
    path = RECORDED / f"crossbar_{name}.json"
    if os.environ.get("LABPNN_RERECORD"):
        path.write_text(json.dumps({"scenario": " ".join(run.__doc__.split()), "twin": RECORDING_TWIN,
                                    "events": events}, indent=1) + "\n")
    recorded = json.loads(path.read_text())["events"]
    assert [list(e) for e in events] == [list(e) for e in recorded]  # send/recv in turn
    for (now,), (then,) in zip((e.values() for e in events), (e.values() for e in recorded)):
        assert len(now) == len(then)
        for a, b in zip(now, then):
            if isinstance(a, str):
                assert a == b
            else:
                np.testing.assert_allclose(a["f32"], b["f32"], rtol=1e-5)


# ---------------------------------------------------------------- real hardware (opt-in)


@pytest.mark.hardware
def test_real_board(request):
    resource = hardware_option(request, "--crossbar-resource")
    with CrossbarBoard(resource=resource) as b:
        assert len(b.identity().split(",")) == 4
        assert b.self_test().ok
        rows, cols = b.array_shape
        w = np.random.default_rng(0).uniform(-1, 1, (min(rows, 16), min(cols // 2, 4))).astype(np.float32)
        b.program_weights(w)
        x = np.random.default_rng(1).uniform(-1, 1, (8, w.shape[0])).astype(np.float32)
        assert np.linalg.norm(b.matmul(x) - x @ w) < 0.3 * np.linalg.norm(x @ w)
    assert not b.connected


# ---------------------------------------------------------------- revision 2: codes, pipeline, lock, watchdog

QUIET = dict(seed=2, rows=32, cols=16, read_noise_rel=0.0, read_noise_abs=0.0, prog_noise=0.0,
             d2d=0.0)


def raw_client(address: str) -> socket.socket:
    _, host, port, _ = address.split("::")
    return socket.create_connection((host, int(port)), timeout=5)


def ask(sock: socket.socket, line: str) -> str:
    sock.sendall(line.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        data += sock.recv(1024)
    return data.decode().strip()


def test_codes_and_float32_give_the_same_outputs_within_the_dac_step(tcp_twin):
    _, address, _ = tcp_twin
    rng = np.random.default_rng(5)
    w, x = rng.standard_normal((20, 6)).astype(np.float32), rng.standard_normal((50, 20)).astype(np.float32)
    with CrossbarBoard(resource=address, timeout_ms=3000) as b, SimCrossbarBoard(**TWIN) as twin:
        b.program_weights(w)
        twin.program_weights(w)
        wire, local, floats = b.matmul(x, format="codes"), twin.matmul(x, format="codes"), b.matmul(x)
        with pytest.raises(ValueError, match="format 'int4'"):
            b.matmul(x, format="int4")
    scale = np.linalg.norm(x @ w)
    assert np.linalg.norm(wire - x @ w) < 0.3 * scale and np.linalg.norm(local - x @ w) < 0.3 * scale
    assert np.linalg.norm(wire - floats) < 0.3 * scale


def test_pipelined_blocks_give_what_one_block_gives(monkeypatch):
    server, address = serve_tcp(CrossbarPhysics(**QUIET))
    rng = np.random.default_rng(6)
    w, x = rng.standard_normal((30, 7)).astype(np.float32), rng.standard_normal((300, 30)).astype(np.float32)
    sent = []
    query_blocks = scpi.SCPISession.query_blocks
    monkeypatch.setattr(scpi.SCPISession, "query_blocks",
                        lambda self, requests, dtype: sent.append(len(requests)) or query_blocks(self, requests, dtype))
    try:
        with CrossbarBoard(resource=address, pipeline_block_bytes=1024) as b:
            b.program_weights(w)
            for fmt in ("float32", "codes"):
                sent.clear()
                piped = b.matmul(x, format=fmt)
                assert max(sent) > 5, fmt  # the batch went out as a pipeline of blocks
                b.options.pipeline_block_bytes = 1 << 20
                sent.clear()
                whole = b.matmul(x, format=fmt)
                assert max(sent) == 1
                b.options.pipeline_block_bytes = 1024
                np.testing.assert_array_equal(piped, whole)
    finally:
        server.close()


def test_a_request_failing_mid_pipeline_is_reported_and_the_link_stays_in_step(tcp_twin, monkeypatch):
    physics, address, _ = tcp_twin
    calls, mvm = [], physics.mvm

    def third_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise DataOutOfRange("read voltage 9 V exceeds the limit 0.2 V (injected)")
        return mvm(*args, **kwargs)
    rng = np.random.default_rng(7)
    w, x = rng.standard_normal((16, 4)).astype(np.float32), rng.standard_normal((200, 16)).astype(np.float32)
    with CrossbarBoard(resource=address, pipeline_block_bytes=1024) as b:
        b.program_weights(w)
        monkeypatch.setattr(physics, "mvm", third_fails)
        with pytest.raises(DataOutOfRange, match="injected"):
            b.matmul(x)
        assert len(calls) > 3 and physics.output is False  # the rest ran; then the safe state
        assert b.identity().startswith("LABPNN") and b.matmul(x).shape == (200, 4)


def test_the_driver_holds_the_boards_lock_while_connected(tcp_twin):
    physics, address, _ = tcp_twin
    with raw_client(address) as other:
        with CrossbarBoard(resource=address) as b:
            assert ask(other, "SYST:LOCK:OWN?") == "OTHER"
            other.sendall(b"OUTP ON\n")  # an operator's command while the run holds the board
            assert ask(other, "SYST:ERR?").startswith("-221") and not physics.output
            with pytest.raises(DeviceError, match="held by another session"):
                CrossbarBoard(resource=address, timeout_ms=500).connect()
            b.safe_state()  # every way a run ends: the board is released ...
            assert ask(other, "SYST:LOCK:OWN?") == "NONE"
            b.output = True  # ... and the next call takes it again
            assert ask(other, "SYST:LOCK:OWN?") == "OTHER"
        assert ask(other, "SYST:LOCK:OWN?") == "NONE"  # released at the end
        with pytest.raises(RuntimeError):
            with CrossbarBoard(resource=address):
                raise RuntimeError("a failure inside the run")
        assert ask(other, "SYST:LOCK:OWN?") == "NONE"  # and on the way out of a failure


def test_the_driver_keeps_the_watchdog_alive_and_a_silent_host_loses_the_outputs(tcp_twin):
    physics, address, server = tcp_twin
    with CrossbarBoard(resource=address, watchdog_s=1.0) as b:
        assert b.scpi.query("SYST:WATC?").strip() == "1.0"
        b.output = True
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # idle for three watchdog periods
            time.sleep(0.1)
        assert physics.output  # kept alive between calls
        b._keep_alive.set()  # the host goes silent (as when it dies)
        deadline = time.monotonic() + 10
        while physics.output and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not physics.output
        with pytest.raises(DeviceSpecificError, match="Watchdog expired"):
            b.scpi.check_errors("SYST:WATC:RES")


def test_an_ipv6_resource_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="IPv4 only"):
        CrossbarBoard(resource="TCPIP::[::1]::5025::SOCKET")


def test_a_run_killed_with_sigkill_leaves_the_outputs_off_within_the_watchdog(tmp_path):
    """The board served by `labpnn sim crossbar` in one process, `labpnn run` in another."""
    import signal
    import subprocess
    import sys

    from engine_helpers import TINY, write_yaml
    board = subprocess.Popen([sys.executable, "-m", "labpnn", "sim", "crossbar", "--tcp", "127.0.0.1:0",
                              "--seed", "1"], stdout=subprocess.PIPE, text=True)
    try:
        address = board.stdout.readline().split()[2]
        bench = write_yaml(tmp_path / "bench.yaml", {"instruments": {"crossbar": {
            "driver": "crossbar", "resource": address, "options": {"watchdog_s": 1.0}}}})
        recipe = write_yaml(tmp_path / "tiny.yaml", TINY)
        run = subprocess.Popen([sys.executable, "-m", "labpnn", "run", "--recipe", recipe, "--config", bench,
                                "--out", tmp_path / "run.h5", "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with raw_client(address) as monitor:
            deadline = time.monotonic() + 240
            while ask(monitor, "OUTP?") != "1":  # the run measures: read voltages applied
                assert run.poll() is None and time.monotonic() < deadline, "the run never switched the output on"
                time.sleep(0.05)
            assert ask(monitor, "SYST:LOCK:OWN?") == "OTHER"
            os.kill(run.pid, signal.SIGKILL)
            run.wait()
            killed = time.monotonic()
            while ask(monitor, "OUTP?") != "0" and time.monotonic() < killed + 10:
                time.sleep(0.05)
            assert ask(monitor, "OUTP?") == "0"  # the watchdog (1 s) switched the outputs off
            assert ask(monitor, "SYST:LOCK:OWN?") == "NONE"  # the dead session's lock went with it
    finally:
        board.terminate()
        board.wait(30)


def test_socket_replies_start_from_pyvisas_buffer_and_hand_back_what_they_read_ahead():
    class Session:  # pyvisa-py's TCPIP session, as far as the reader uses it
        _pending_buffer = bytearray(b"#18")

    here, there = socket.socketpair()
    values = np.arange(2, dtype=np.float32)
    there.sendall(values.tobytes() + b"\n0,\"No error\"\nnext\n")
    with here, there:
        with scpi._SocketReplies(here, Session, 1.0) as reader:
            assert reader.take(1) == b"#" and reader.take(1) == b"1" and reader.take(1) == b"8"
            got = np.empty(2, np.float32)
            reader.into(memoryview(got).cast("B"))
            assert reader.take(1) == b"\n" and reader.line() == '0,"No error"'
        assert np.array_equal(got, values)
        assert bytes(Session._pending_buffer) == b"next\n"  # read ahead, handed back
        with pytest.raises(pyvisa.errors.VisaIOError):  # nothing more comes
            with scpi._SocketReplies(here, Session, 0.05) as reader:
                reader.take(len(b"next\n") + 1)
        assert bytes(Session._pending_buffer) == b""  # a failed read drops its bytes
