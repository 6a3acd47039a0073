"""The crossbar twin's SCPI front: parser, error queue, TCP and pty servers, CLI."""

import io
import os
import select
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labpnn.sim_devices.crossbar import CrossbarPhysics
from labpnn.sim_devices import scpi_server
from labpnn.sim_devices.scpi_server import CommandReader, CrossbarSCPI, Message, serve_pty, serve_tcp


def block(values) -> bytes:
    payload = np.asarray(values, "<f4").tobytes()
    size = str(len(payload)).encode()
    return b"#" + str(len(size)).encode() + size + payload


def memory_reader(data: bytes, **options) -> CommandReader:
    stream = io.BytesIO(data)
    return CommandReader(stream.readinto, lambda timeout: stream.tell() < len(data), **options)


def run(front: CrossbarSCPI, data: bytes, **options) -> list[bytes]:
    """Feed bytes through a parser into the front; the replies it sends."""
    return [r for r in map(front.handle, memory_reader(data, **options)) if r is not None]


def errors(front: CrossbarSCPI) -> list[int]:
    codes = []
    while (entry := front.errors.pop()) != '0,"No error"':
        codes.append(int(entry.split(",")[0]))
    return codes


@pytest.fixture
def front():
    return CrossbarSCPI(CrossbarPhysics(seed=0, rows=8, cols=4, prog_noise=0.0, read_noise_rel=0.0,
                                        read_noise_abs=0.0))


# ---------------------------------------------------------------- command set


def test_headers_in_short_long_and_any_case(front):
    replies = run(front, b"*idn?\nARRay:SIZE?\narr:size?\n:Array:Size?\nsource:voltage:limit?\n"
                         b"OUTP ON\noutput:state?\nOUTP:STAT OFF\nOUTPut?\nsyst:err:next?\n")
    assert replies == [b"LABPNN,XBAR-SIM,0001,1.0\n", b"8,4\n", b"8,4\n", b"8,4\n", b"0.2\n",
                       b"1\n", b"0\n", b'0,"No error"\n']


def test_remembered_headers_are_bounded_and_answer_as_before(front, monkeypatch):
    monkeypatch.setattr(scpi_server, "KNOWN_HEADERS", 3)
    spellings = [b"ARR:SIZE?", b":ARR:SIZE?", b"ARRAY:SIZE?", b"arr:siz?", b":Array:SIZE?",
                 b"ARRay:size?"]
    replies = run(front, b"".join(h + b"\n" for h in spellings * 2))
    assert replies == [b"8,4\n"] * 10  # four spellings of one header (case folded), twice
    assert errors(front) == [-113, -113]  # 'ARR:SIZ?' is unknown each time, not remembered
    assert len(front._known) == 3


def test_settings_round_trip(front):
    replies = run(front, b"CONF:GRAN 2e-6,3e-5\nCONF:GRAN?\nSOUR:VOLT:LIM 0.1\nSOUR:VOLT:LIM?\n"
                         b"CONF:ADC:BITS 8\nCONF:ADC:BITS?\nCONF:ADC:RANG 1e-4\nCONF:ADC:RANG?\n"
                         b"PROG:TOL 0.05\nPROG:TOL?\nPROG:ITER 7\nPROG:ITER?\n*OPC?\n*TST?\n")
    assert replies == [b"2e-06,3e-05\n", b"0.1\n", b"8\n", b"0.0001\n", b"0.05\n", b"7\n",
                       b"1\n", b"0\n"]
    assert run(front, b"*RST\nSOUR:VOLT:LIM?\n") == [b"0.2\n"]


def test_program_measure_and_mvm_with_blocks(front):
    g = [10e-6, 20e-6, 30e-6, 40e-6]
    replies = run(front, b"PROG:COND 0,0,2,2," + block(g) + b"\nPROG:STAT?\nMEAS:COND? 0,0,2,2\n"
                         b"OUTP ON\nMEAS:MVM? 1,0,2,0,2," + block([0.1, 0.1]) + b"\nDIAG:ADC?\n")
    assert replies[0] == b"4,0\n"
    assert replies[1][:4] == b"#216" and replies[1][-1:] == b"\n"
    read = np.frombuffer(replies[1][4:-1], "<f4").reshape(2, 2)
    assert np.abs(read - np.reshape(g, (2, 2))).max() < 8e-6
    current = np.frombuffer(replies[2][3:-1], "<f4")
    np.testing.assert_allclose(current, [4e-6, 6e-6], atol=1.5e-6)
    assert replies[3] == b"#216" + bytes(16) + b"\n"
    assert errors(front) == []


@pytest.mark.parametrize("data, code", [
    (b"\x01\x02 bad\n", -100),
    (b"OUTP MAYBE\n", -102),
    (b"ARR:SIZE? 3\n", -102),
    (b"MEAS::MVM?\n", -102),
    (b"CONF:GRAN 1e-6\n", -109),
    (b"PROG:COND 0,0,2,2\n", -109),
    (b"FOO:BAR?\n", -113),
    (b"PROG:COND 0,0,2,2,#0abc\n", -160),
    (b"PROG:COND 0,0,1,1,#13abc\n", -160),
    (b"MEAS:MVM? 1,0,2,0,2," + block([0.1, 0.1]) + b"\n", -221),
    (b"SOUR:VOLT:LIM 5\n", -222),
    (b"PROG:COND 0,0,1,1," + block([1.0]) + b"\n", -222),
    (b"PROG:COND 7,3,2,2," + block([1e-5] * 4) + b"\n", -222),
    (b"PROG:COND 0,0,1,1," + block([1e-5, 1e-5]) + b"\n", -223),
    (b"PROG:COND 0,0,2,1," + block([1e-5]) + b"\n", -109),
    (b"A" * 5000 + b"\n", -223),
])
def test_each_failure_queues_its_code_and_changes_nothing(front, data, code):
    before = front.physics.read(0, 0, 8, 4)
    assert run(front, data + b"*IDN?\n") == [b"LABPNN,XBAR-SIM,0001,1.0\n"]  # failed query: no reply
    assert errors(front) == [code]
    np.testing.assert_array_equal(front.physics.read(0, 0, 8, 4), before)
    assert front.physics.output is False


def test_hardware_and_internal_faults_are_queued(front, monkeypatch):
    front.physics.inject_fault("broken_adc", columns=[0], reported=True)
    assert run(front, b"OUTP ON\nMEAS:MVM? 1,0,1,0,1," + block([0.1]) + b"\n*TST?\n") == [b"1\n"]
    assert errors(front) == [-310]
    monkeypatch.setattr(front.physics, "program", lambda *args: 1 / 0)  # a bug in the twin
    assert run(front, b"PROG:COND 0,0,1,1," + block([1e-5]) + b"\n*OPC?\n") == [b"1\n"]
    assert errors(front) == [-200]


def test_error_queue_overflows_into_350(front):
    run(front, b"BAD\n" * 20)
    assert errors(front) == [-113] * 15 + [-350]
    run(front, b"BAD\n*CLS\n")
    assert errors(front) == []


def test_blocks_may_hold_newlines_and_are_capped():
    front = CrossbarSCPI(CrossbarPhysics(rows=4, cols=4))
    values = np.frombuffer(b"\n\n\x20\x38" * 4, "<f4")  # 3.8e-5 S, every byte pair a newline
    assert 1e-6 < values[0] < 4e-5
    replies = run(front, b"PROG:COND 0,0,1,4," + block(values) + b"\nPROG:STAT?\n")
    assert replies == [b"4,0\n"]
    capped = run(front, b"PROG:COND 0,0,1,4," + block(np.zeros(64)) + b"\n*IDN?\n", max_block=128)
    assert capped[-1].startswith(b"LABPNN") and -223 in errors(front)


def test_a_stalled_block_is_dropped():
    left, right = socket.socketpair()
    reader = CommandReader(right.recv_into, lambda t: bool(select.select([right], [], [], t)[0]),
                           stall_timeout=0.2)
    left.sendall(b"PROG:COND 0,0,1,1,#18abc")
    item = next(iter(reader))
    assert (item.code, "stalled" in item.detail) == (-160, True)
    left.sendall(b"\n*IDN?\n")
    assert next(iter(reader)) == Message("*IDN?")
    left.close()
    right.close()


# ---------------------------------------------------------------- fuzz

HEADERS = ["*IDN?", "*RST", "*CLS", "*OPC?", "*TST?", "SYST:ERR?", "ARR:SIZE?", "CONF:GRAN",
           "CONF:GRAN?", "SOUR:VOLT:LIM", "OUTP", "OUTP?", "PROG:COND", "PROG:TOL", "PROG:ITER?",
           "PROG:STAT?", "MEAS:COND?", "MEAS:MVM?", "CONF:ADC:BITS", "CONF:ADC:RANG?", "DIAG:ADC?",
           "meas:mvm?", "PROGram:CONDuctance"]
PARAM = st.one_of(st.integers(-3, 40).map(str), st.floats(allow_nan=True).map(repr),
                  st.sampled_from(["ON", "OFF", "", "#", "#0", "#9", "x", "1e-5"]))
NEAR_VALID = st.builds(
    lambda h, ps, blk: h.encode() + b" " + ",".join(ps).encode()
    + ((b"," + block(blk)) if blk is not None else b"") + b"\n",
    st.sampled_from(HEADERS), st.lists(PARAM, max_size=6),
    st.none() | st.lists(st.floats(-1, 1, width=32), max_size=40))
GARBAGE = st.lists(st.binary(max_size=200) | NEAR_VALID, max_size=12).map(b"".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(GARBAGE)
def test_fuzzed_input_never_breaks_the_parser_or_the_board(data):
    front = CrossbarSCPI(CrossbarPhysics(rows=8, cols=4))
    replies = run(front, data, max_block=4096, stall_timeout=0.0)
    assert all(r.endswith(b"\n") for r in replies)
    assert len(front.errors) <= 16
    assert run(front, b"*IDN?\n") == [b"LABPNN,XBAR-SIM,0001,1.0\n"]


@pytest.fixture(scope="module")
def tcp():
    server, address = serve_tcp(CrossbarPhysics(rows=8, cols=4), stall_timeout=0.2, max_block=1 << 20)
    yield server, address.split("::")[1], int(address.split("::")[2])
    server.close()


def query(host, port, data: bytes, lines: int) -> list[bytes]:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(data)
        f = sock.makefile("rb")
        return [f.readline() for _ in range(lines)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(GARBAGE)
def test_fuzzed_tcp_input_never_breaks_the_server(tcp, data):
    _, host, port = tcp
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(data)
    assert query(host, port, b"*IDN?\n", 1) == [b"LABPNN,XBAR-SIM,0001,1.0\n"]


# ---------------------------------------------------------------- servers


def test_clients_in_turn_and_at_once_share_one_board(tcp):
    server, host, port = tcp
    assert query(host, port, b"*CLS\nPROG:TOL 0.07\n*OPC?\n", 1) == [b"1\n"]  # applied before we go on
    assert query(host, port, b"PROG:TOL?\n", 1) == [b"0.07\n"]
    a, b = socket.create_connection((host, port)), socket.create_connection((host, port))
    with a, b:
        a.sendall(b"ARR:SIZE?\n")
        b.sendall(b"*IDN?\n")
        assert b.makefile("rb").readline().startswith(b"LABPNN")
        assert a.makefile("rb").readline() == b"8,4\n"
    assert server.front.physics.prog_tolerance == 0.07


def test_pty_server_answers_like_a_serial_board():
    server, path = serve_pty(CrossbarPhysics(rows=8, cols=4))
    try:
        assert server.address == f"ASRL{path}::INSTR"
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"*IDN?\nARR:SIZE?\n")
            data = b""
            while data.count(b"\n") < 2 and select.select([fd], [], [], 5)[0]:
                data += os.read(fd, 1024)
            assert data == b"LABPNN,XBAR-SIM,0001,1.0\n8,4\n"
        finally:
            os.close(fd)
    finally:
        server.close()
    assert not server.is_alive()


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labpnn", "sim", "crossbar", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_on_a_free_port_until_signalled(sig):
    proc = cli("--tcp", "127.0.0.1:0", "--seed", "3", "--rows", "16", "--cols", "8")
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on TCPIP::127.0.0.1::") and line.endswith("::SOCKET")
        port = int(line.split("::")[2])
        assert port != 0
        assert query("127.0.0.1", port, b"ARR:SIZE?\n", 1) == [b"16,8\n"]
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_cli_pty_prints_the_visa_resource():
    proc = cli("--pty")
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on ASRL/dev/") and "::INSTR" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_cli_refuses_bad_options():
    proc = cli("--tcp", "127.0.0.1:0", "--g-min", "5e-5")
    assert proc.wait(timeout=20) == 2
    assert "g_min" in proc.stderr.read()


# ---------------------------------------------------------------- revision 2: sessions, lock, watchdog


class Client:
    """A raw TCP client of the board: send lines, read reply lines."""

    def __init__(self, address: str, timeout: float = 5):
        _, rest = address.split("::", 1)
        host, port = rest.removesuffix("::SOCKET").rsplit("::", 1)
        family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
        self.sock = socket.socket(family)
        self.sock.settimeout(timeout)
        self.sock.connect((host.strip("[]"), int(port)))
        self.file = self.sock.makefile("rb")

    def ask(self, *lines: str) -> list[bytes]:
        """Send the lines; read one reply for each query among them."""
        self.sock.sendall("".join(f"{line}\n" for line in lines).encode())
        return [self.file.readline() for line in lines if line.split()[0].endswith("?")]

    def error(self) -> int:
        return int(self.ask("SYST:ERR?")[0].split(b",")[0])

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def board_server():
    physics = CrossbarPhysics(rows=8, cols=4)
    server, address = serve_tcp(physics)
    clients = []

    def client(**kwargs) -> Client:
        clients.append(Client(address, **kwargs))
        return clients[-1]
    yield physics, client, server
    for c in clients:
        c.close()
    server.close()


def test_each_tcp_session_has_its_own_error_queue(board_server):
    _, client, _ = board_server
    run_, noisy = client(), client()
    noisy.ask("TYPO", "TYPO 2")  # another client's mistakes ...
    run_.ask("PROG:TOL 0.05")
    assert run_.error() == 0  # ... are not blamed on the run's command
    assert [noisy.error(), noisy.error(), noisy.error()] == [-113, -113, 0]


def test_the_lock_holder_alone_changes_the_board(board_server):
    physics, client, _ = board_server
    run_, other = client(), client()
    assert run_.ask("SYST:LOCK:REQ?") == [b"1\n"]
    assert other.ask("SYST:LOCK:REQ?", "SYST:LOCK:OWN?") == [b"0\n", b"OTHER\n"]
    assert run_.ask("SYST:LOCK:OWN?") == [b"SELF\n"]
    for command in ("OUTP ON", "*RST", "PROG:TOL 0.5", "CONF:ADC:BITS 6", "SOUR:VOLT:LIM 0.1",
                    "SYST:WATC 1", "MEAS:MVM? 1,0,1,0,1," + block([0.1]).decode("latin-1")):
        other.sock.sendall(command.encode("latin-1") + b"\n")
        assert other.error() == -221, command
    assert other.ask("*IDN?", "ARR:SIZE?", "OUTP?", "PROG:TOL?") == [
        b"LABPNN,XBAR-SIM,0001,1.0\n", b"8,4\n", b"0\n", b"0.12\n"]  # reads are answered
    assert (physics.output, physics.prog_tolerance, physics.applied_vectors) == (False, 0.12, 0)
    other.ask("SYST:LOCK:REL")  # not the holder's: changes nothing
    assert run_.ask("SYST:LOCK:OWN?") == [b"SELF\n"]
    run_.close()  # closing the session releases the lock
    assert other.ask("SYST:LOCK:OWN?", "SYST:LOCK:REQ?") == [b"NONE\n", b"1\n"]
    other.ask("OUTP ON")
    assert other.error() == 0 and physics.output


def test_identity_and_errors_answer_while_another_session_programs(board_server, monkeypatch):
    physics, client, _ = board_server
    import threading
    started, finish = threading.Event(), threading.Event()
    program = physics.program

    def slow_program(*args):  # a programming that runs until the test lets it end
        started.set()
        finish.wait(30)
        return program(*args)
    monkeypatch.setattr(physics, "program", slow_program)
    run_, monitor = client(), client(timeout=5)
    run_.sock.sendall(b"PROG:COND 0,0,1,1," + block([2e-5]) + b"\n")
    assert started.wait(5)
    try:
        assert monitor.ask("*IDN?", "SYST:ERR?", "SYST:LOCK:OWN?", "OUTP?") == [
            b"LABPNN,XBAR-SIM,0001,1.0\n", b'0,"No error"\n', b"NONE\n", b"0\n"]
        assert not finish.is_set()  # answered while the programming still ran
    finally:
        finish.set()
    assert run_.ask("PROG:STAT?") == [b"1,0\n"]


def test_watchdog_turns_the_outputs_off_after_silence_from_its_session():
    now = [0.0]
    front = CrossbarSCPI(CrossbarPhysics(rows=8, cols=4), clock=lambda: now[0])
    host, other = front.session(), front.session()
    for line in (b"SYST:WATC 2\n", b"OUTP ON\n"):
        host.handle(Message(line.decode().strip()))
    assert host.handle(Message("SYST:WATC?")) == b"2.0\n"
    now[0] = 1.5
    host.handle(Message("SYST:WATC:RES"))  # a keep-alive
    now[0] = 3.0
    other.handle(Message("*IDN?"))  # another session's traffic does not keep it alive
    front.check_watchdog()
    assert front.physics.output  # 1.5 s since the keep-alive
    now[0] = 3.6
    front.check_watchdog()
    assert not front.physics.output
    assert host.errors.pop() == '-310,"System error; Watchdog expired"'
    assert other.errors.pop() == '0,"No error"'
    host.handle(Message("OUTP ON"))
    receive = host.receiver(lambda view: len(view))  # a block arriving slowly, byte by byte
    now[0] = 5.5
    receive(memoryview(bytearray(1)))  # bytes received are traffic, before the command is whole
    now[0] = 7.0
    front.check_watchdog()
    assert front.physics.output
    front.stop_watchdog()


def test_watchdog_refuses_bad_periods_and_zero_disarms_it(front):
    assert run(front, b"SYST:WATC -1\nSYST:WATC nan\nSYST:WATC 0\nSYST:WATC?\n") == [b"0.0\n"]
    assert errors(front) == [-222, -222]


def test_code_mvm_is_the_float_mvm_in_dac_and_adc_steps(front):
    p = front.physics
    run(front, b"PROG:COND 0,0,2,2," + block([2e-5, 1e-5, 3e-5, 4e-5]) + b"\nOUTP ON\n")
    codes = np.array([[127, -64], [3, 0]], np.int8)
    dac, adc = (float(r) for r in run(front, b"CONF:DAC:LSB?\nCONF:ADC:LSB?\n"))
    assert run(front, b"CONF:DAC:BITS?\n") == [b"8\n"] and dac == pytest.approx(0.2 / 127)
    code_reply, = run(front, b"MEAS:MVM:CODE? 2,0,2,0,2,#14" + codes.tobytes() + b"\n")
    float_reply, = run(front, b"MEAS:MVM? 2,0,2,0,2," + block(codes.astype(np.float32) * dac) + b"\n")
    assert code_reply[:3] == b"#18" and code_reply.endswith(b"\n")  # 4 int16
    got = np.frombuffer(code_reply[3:-1], "<i2").reshape(2, 2) * adc
    np.testing.assert_allclose(got, np.frombuffer(float_reply[4:-1], "<f4").reshape(2, 2), rtol=1e-6)
    np.testing.assert_allclose(got, codes * dac @ p.conductance()[:2, :2], atol=adc / 2 + 1e-12)
    assert errors(front) == []
    bad = [b"MEAS:MVM:CODE? 1,0,2,0,2,#12" + np.array([-128, 0], np.int8).tobytes() + b"\n",  # -222
           b"MEAS:MVM:CODE? 1,0,2,0,2,#11\x01\n",  # -109
           b"MEAS:MVM:CODE? 1,0,2,0,2,#13\x01\x01\x01\n"]  # -223
    assert run(front, b"".join(bad)) == [] and errors(front) == [-222, -109, -223]
    p.adc_bits = 20
    assert run(front, b"MEAS:MVM:CODE? 1,0,2,0,2,#12\x01\x01\n") == [] and errors(front) == [-221]


# ---------------------------------------------------------------- revision 2: bounded servers


def test_a_declared_block_beyond_what_its_command_uses_is_refused_unread():
    left, right = socket.socketpair()
    front = CrossbarSCPI(CrossbarPhysics(rows=8, cols=4))
    reader = CommandReader(right.recv_into, lambda t: bool(select.select([right], [], [], t)[0]),
                           stall_timeout=0.2, block_limit=front.block_limit)
    with left, right:
        left.sendall(b"PROG:COND 0,0,1,1,#867108864" + bytes(1000))  # 64 MiB declared, 4 B used
        item = next(iter(reader))
        assert item.code == -223 and "4" in item.detail
        assert len(reader._payload) < 1 << 16  # nothing allocated for the declared size
        left.sendall(b"\n*IDN?\n")
        assert next(iter(reader)) == Message("*IDN?")


def test_block_limits_follow_the_command_shape():
    front = CrossbarSCPI(CrossbarPhysics(rows=8, cols=4))
    assert front.block_limit(b"PROG:COND 0,0,2,3,") == 24
    assert front.block_limit(b"PROG:COND 0,0,200,300,") == 8 * 4 * 4  # the array bounds it
    assert front.block_limit(b"MEAS:MVM? 10,0,8,0,4,") == 10 * 8 * 4
    assert front.block_limit(b"MEAS:MVM:CODE? 10,0,8,0,4,") == 10 * 8
    assert front.block_limit(b"*IDN? ") is None  # not a block command: execution says so


def test_connections_beyond_the_limit_are_closed():
    server, address = serve_tcp(CrossbarPhysics(rows=8, cols=4), max_connections=2)
    try:
        first, second = Client(address), Client(address)
        assert first.ask("*IDN?")[0].startswith(b"LABPNN") and second.ask("*IDN?")[0].startswith(b"LABPNN")
        third = Client(address)
        try:
            third.sock.sendall(b"*IDN?\n")
            assert third.file.readline() == b""  # closed on arrival
        except ConnectionResetError:  # closed on arrival, before or after our bytes came
            pass
        first.close()
        for _ in range(50):  # the freed slot is taken by the next client
            fourth = Client(address)
            try:
                fourth.sock.sendall(b"*IDN?\n")
                if fourth.file.readline().startswith(b"LABPNN"):
                    break
            except ConnectionResetError:
                pass
            finally:
                fourth.close()
            time.sleep(0.1)
        else:
            pytest.fail("a freed connection slot was never reused")
        for c in (second, third):
            c.close()
    finally:
        server.close()


def test_a_stalled_command_line_is_dropped_on_tcp_but_a_terminal_may_type_slowly():
    left, right = socket.socketpair()
    reader = CommandReader(right.recv_into, lambda t: bool(select.select([right], [], [], t)[0]),
                           line_timeout=0.2)  # as TcpServer's (LINE_TIMEOUT); a pty has none
    with left, right:
        left.sendall(b"*IDN")  # and nothing more
        item = next(iter(reader))
        assert (item.code, item.detail) == (-160, "command line incomplete: input stalled")
        left.sendall(b"*IDN?\n")
        assert next(iter(reader)) == Message("*IDN?")
    server, _ = serve_pty(CrossbarPhysics(rows=8, cols=4))
    try:
        assert server._reader.line_timeout is None
    finally:
        server.close()


def test_ipv6_is_served_or_refused_cleanly():
    from labpnn.sim_devices.scpi_server import build_parser
    assert build_parser().parse_args(["--tcp", "[::1]:0"]).tcp == ("::1", 0)
    done = subprocess.run([sys.executable, "-m", "labpnn", "sim", "crossbar", "--tcp", "::1:0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "brackets" in done.stderr and "Traceback" not in done.stderr
    try:
        server, address = serve_tcp(CrossbarPhysics(rows=8, cols=4), host="::1")
    except OSError as exc:  # a machine without IPv6 loopback
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert address.startswith("TCPIP::[::1]::")
        c = Client(address)
        assert c.ask("*IDN?")[0].startswith(b"LABPNN")
        c.close()
    finally:
        server.close()
