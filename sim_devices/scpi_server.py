"""The SCPI front of the simulated crossbar board (../shared/specs/crossbar-scpi.md):
a stream parser, the command set on a CrossbarPhysics model, TCP and pty servers, and
`cli_main` behind `labpnn sim crossbar`.

TCP serves each connection in its own thread; the command set holds one lock around the
model, and the error queue is the board's (shared by all connections, as on an
instrument). Malformed input never stops a server: it becomes an error-queue entry and the
parser resynchronises at the next newline.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import select
import signal
import socket
import sys
import threading
import tty
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from labpnn.instruments.scpi import CommandError, DataOutOfRange, SCPIError, TooMuchData, fmt_float
from labpnn.sim_devices.crossbar import CrossbarPhysics, PhysicsOptions

log = logging.getLogger(__name__)

MAX_LINE = 4096  # bytes of command text (a block not counted)
MAX_BLOCK = 64 << 20  # bytes of one block payload
STALL_TIMEOUT = 2.0  # s without bytes inside a block before it is dropped
QUEUE_DEPTH = 16
MESSAGES = {0: "No error", -100: "Command error", -102: "Syntax error", -109: "Missing parameter",
            -113: "Undefined header", -160: "Block data error", -200: "Execution error",
            -221: "Settings conflict", -222: "Data out of range", -223: "Too much data",
            -310: "System error", -350: "Queue overflow"}
F32 = np.dtype("<f4")


# ---------------------------------------------------------------- error queue


class ErrorQueue:
    """The SCPI error queue: depth 16; on overflow the newest entry becomes -350."""

    def __init__(self):
        self._entries: deque[tuple[int, str]] = deque()

    def push(self, code: int, detail: str = "") -> None:
        message = MESSAGES.get(code, "Error") + (f"; {detail}" if detail else "")
        if len(self._entries) >= QUEUE_DEPTH:
            self._entries[-1] = (-350, MESSAGES[-350])
        else:
            self._entries.append((code, message.replace('"', "'")))

    def pop(self) -> str:
        code, message = self._entries.popleft() if self._entries else (0, MESSAGES[0])
        return f'{code},"{message}"'

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------- stream parser


@dataclass
class Message:
    """One program message: its text and, if it ended in a block, the block's payload."""

    text: str
    block: memoryview | None = None  # valid until the reader reads the next message


@dataclass
class ParseError:
    """Input the parser could not frame; goes to the error queue."""

    code: int
    detail: str


_INVALID = re.compile(rb"[^\t\r\x20-\x7e]")
_HEAD = re.compile(rb"[ \t]*[^ \t]+[ \t]")


class CommandReader:
    """Splits a byte stream into Messages (a line, or a line ending in an IEEE 488.2
    definite-length block) and ParseErrors, resynchronising at newlines.

    `recv_into(view) -> n` reads (0 at end of stream); `wait(timeout) -> bool` says whether
    bytes are ready (timeout None: wait until they are or the stream ends).
    """

    def __init__(self, recv_into: Callable[[memoryview], int],
                 wait: Callable[[float | None], bool], *, max_line: int = MAX_LINE,
                 max_block: int = MAX_BLOCK, stall_timeout: float = STALL_TIMEOUT):
        self._recv_into = recv_into
        self._wait = wait
        self.max_line, self.max_block, self.stall_timeout = max_line, max_block, stall_timeout
        self._buf = bytearray()
        self._chunk = bytearray(1 << 16)
        self._payload = bytearray()  # reused: large blocks arrive without new page faults
        self._eof = False

    def __iter__(self) -> Iterator[Message | ParseError]:
        while (item := self._next()) is not None:
            yield item

    def _fill(self, timeout: float | None = None) -> bool:
        """Append what arrives to the buffer; False at end of stream or after `timeout`."""
        if self._eof or not self._wait(timeout):
            self._eof = self._eof or timeout is None
            return False
        n = self._recv_into(memoryview(self._chunk))
        if n == 0:
            self._eof = True
            return False
        self._buf += memoryview(self._chunk)[:n]
        return True

    def _need(self, size: int) -> bool:
        """Wait (at most the stall timeout per read) until the buffer holds `size` bytes."""
        while len(self._buf) < size:
            if not self._fill(self.stall_timeout):
                return False
        return True

    def _next(self) -> Message | ParseError | None:
        while True:
            nl = self._buf.find(b"\n")
            hash_at = self._block_start(nl if nl >= 0 else len(self._buf))
            if hash_at >= 0:
                return self._read_block(hash_at)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[:nl + 1]
                item = self._message(line)
                if item is not None:
                    return item
            elif len(self._buf) > self.max_line:
                return self._skip_line(-223, f"command longer than {self.max_line} bytes")
            elif not self._fill():
                return None

    def _block_start(self, limit: int) -> int:
        """Index of a '#' that starts a parameter before `limit`, else -1."""
        buf = self._buf
        head = _HEAD.match(buf, 0, limit)
        if head is None:
            return -1
        pos = buf.find(b"#", head.end(), limit)
        while pos >= 0:
            before = buf[head.end():pos].rstrip(b" \t")
            if not before or before.endswith(b","):
                return pos
            pos = buf.find(b"#", pos + 1, limit)
        return -1

    def _skip_line(self, code: int, detail: str) -> ParseError | None:
        """Drop input through the next newline; the error to report (None at end of stream)."""
        while (nl := self._buf.find(b"\n")) < 0:
            self._buf.clear()
            if not self._fill():
                return None
        del self._buf[:nl + 1]
        return ParseError(code, detail)

    def _read_block(self, at: int) -> Message | ParseError | None:
        if not self._need(at + 2):
            return self._stalled("block header")
        ndigits = self._buf[at + 1] - ord("0")
        if not 1 <= ndigits <= 9:
            return self._skip_line(-160, "block header is not '#<1-9><length>'")
        if not self._need(at + 2 + ndigits):
            return self._stalled("block header")
        digits = bytes(self._buf[at + 2:at + 2 + ndigits])
        if not digits.isdigit():
            return self._skip_line(-160, f"block length {digits!r} is not a number")
        length = int(digits)
        if at > self.max_line:
            return self._skip_line(-223, f"command longer than {self.max_line} bytes")
        if length > self.max_block:
            return self._skip_line(-223, f"block of {length} bytes exceeds {self.max_block}")
        text = bytes(self._buf[:at])
        start = at + 2 + ndigits
        if len(self._payload) < length:
            self._payload = bytearray(length)
        view = memoryview(self._payload)[:length]
        got = min(length, len(self._buf) - start)
        view[:got] = self._buf[start:start + got]
        del self._buf[:start + got]
        while got < length:  # large payloads go straight into place
            if self._eof or not self._wait(self.stall_timeout):
                return self._stalled(f"block ({got} of {length} bytes)")
            n = self._recv_into(view[got:])
            if n == 0:
                self._eof = True
                return None
            got += n
        if not self._need(1):
            return self._stalled("newline after the block")
        if self._buf[0] != ord("\n"):
            return self._skip_line(-160, "block not followed by a newline")
        del self._buf[:1]
        item = self._message(text)
        if isinstance(item, Message):
            item.block = view
        return item

    def _stalled(self, what: str) -> ParseError | None:
        self._buf.clear()
        return None if self._eof else ParseError(-160, f"{what} incomplete: input stalled")

    def _message(self, line: bytes) -> Message | ParseError | None:
        if len(line) > self.max_line:
            return ParseError(-223, f"command longer than {self.max_line} bytes")
        if _INVALID.search(line):
            return ParseError(-100, "invalid character in command")
        text = line.decode("ascii").strip()
        return Message(text) if text else None


# ---------------------------------------------------------------- the command set


def _mnemonic(node: str) -> tuple[str, str]:
    short = "".join(c for c in node if not c.islower())
    return short.upper(), node.upper()


def _pattern(header: str) -> tuple[list[tuple[str, str, bool]], bool]:
    """'SYSTem:ERRor[:NEXT]?' -> nodes (short, long, optional) and whether it is a query."""
    query = header.endswith("?")
    nodes = []
    for part in re.findall(r"\[:[^\]]+\]|[^:\[\]?]+", header.rstrip("?")):
        optional = part.startswith("[")
        nodes.append((*_mnemonic(part.strip("[]:")), optional))
    return nodes, query


def _match(nodes: list[tuple[str, str, bool]], words: list[str]) -> bool:
    if not nodes:
        return not words
    short, long, optional = nodes[0]
    if words and words[0] in (short, long) and _match(nodes[1:], words[1:]):
        return True
    return optional and _match(nodes[1:], words)


_HEADER = re.compile(r"^:?(\*[A-Z]+\??|[A-Z][A-Z0-9]*(:[A-Z][A-Z0-9]*)*\??)$")


def _count_error(what: str, given: int, wanted: int) -> CommandError:
    code = -109 if given < wanted else -102
    return CommandError(f"{what} takes {wanted} parameters, got {given}", code=code)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def _bool(text: str) -> bool:
    upper = text.upper()
    if upper not in ("ON", "OFF", "1", "0"):
        raise ValueError(text)
    return upper in ("ON", "1")


class CrossbarSCPI:
    """The board's command set on a CrossbarPhysics model, with its error queue and lock."""

    def __init__(self, physics: CrossbarPhysics):
        self.physics = physics
        self.errors = ErrorQueue()
        self.lock = threading.Lock()
        p = physics
        table = {  # header: (parameter parsers, action)
            "*IDN?": ((), p.identity),
            "*RST": ((), self._reset),
            "*CLS": ((), self.errors.clear),
            "*OPC?": ((), lambda: "1"),
            "*TST?": ((), lambda: str(p.self_test_code())),
            "SYSTem:ERRor[:NEXT]?": ((), self.errors.pop),
            "ARRay:SIZE?": ((), lambda: "{},{}".format(*p.array_shape)),
            "CONFigure:GRANge?": ((), lambda: ",".join(map(fmt_float, p.g_range))),
            "CONFigure:GRANge": ((float, float), lambda lo, hi: setattr(p, "g_range", (lo, hi))),
            "SOURce:VOLTage:LIMit?": ((), lambda: fmt_float(p.v_limit)),
            "SOURce:VOLTage:LIMit": ((float,), lambda v: setattr(p, "v_limit", v)),
            "OUTPut[:STATe]?": ((), lambda: str(int(p.output))),
            "OUTPut[:STATe]": ((_bool,), lambda on: setattr(p, "output", on)),
            "PROGram:CONDuctance": ((_int,) * 4, self._program),
            "PROGram:TOLerance?": ((), lambda: fmt_float(p.prog_tolerance)),
            "PROGram:TOLerance": ((float,), lambda v: setattr(p, "prog_tolerance", v)),
            "PROGram:ITERations?": ((), lambda: str(p.prog_iterations)),
            "PROGram:ITERations": ((_int,), lambda n: setattr(p, "prog_iterations", n)),
            "PROGram:STATus?": ((), lambda: "{},{}".format(*p.prog_status)),
            "MEASure:CONDuctance?": ((_int,) * 4, p.read),
            "MEASure:MVM?": ((_int,) * 5, self._mvm),
            "CONFigure:ADC:BITS?": ((), lambda: str(p.adc_bits)),
            "CONFigure:ADC:BITS": ((_int,), lambda b: setattr(p, "adc_bits", b)),
            "CONFigure:ADC:RANGe?": ((), lambda: fmt_float(p.adc_range)),
            "CONFigure:ADC:RANGe": ((float,), lambda i: setattr(p, "adc_range", i)),
            "DIAGnostic:ADC?": ((), p.adc_health),
        }
        takes_block = {"PROGram:CONDuctance", "MEASure:MVM?"}
        self._commands = [(*_pattern(header), header, parsers, action, header in takes_block)
                          for header, (parsers, action) in table.items()]

    def _reset(self) -> None:
        self.physics.reset()
        self.errors.clear()

    def _program(self, r0: int, c0: int, rows: int, cols: int, values: np.ndarray) -> None:
        self.physics.program(r0, c0, values.reshape(rows, cols))

    def _mvm(self, n: int, r0: int, rows: int, c0: int, cols: int, values: np.ndarray):
        return self.physics.mvm(values.reshape(n, rows), r0, c0, cols)

    def handle(self, item: Message | ParseError) -> bytes | None:
        """Execute one message; the reply to send (None for commands and failed queries)."""
        if isinstance(item, ParseError):
            with self.lock:
                self.errors.push(item.code, item.detail)
            return None
        with self.lock:
            try:
                return self._execute(item)
            except SCPIError as exc:
                self.errors.push(exc.code, exc.scpi_message)
            except Exception as exc:  # a bug in the twin must not take the server down
                log.exception("crossbar twin failed on %r", item.text[:80])
                self.errors.push(-200, f"internal: {exc}")
            return None

    def _execute(self, message: Message) -> bytes | None:
        header, _, rest = message.text.partition(" ")
        header, rest = header.upper(), rest.strip()
        if not _HEADER.match(header):
            raise CommandError(f"malformed header {header[:40]!r}", code=-102)
        query = header.endswith("?")
        words = header.lstrip(":").rstrip("?").split(":")
        for nodes, is_query, name, parsers, action, takes_block in self._commands:
            if is_query == query and _match(nodes, words):
                break
        else:
            raise CommandError(f"{header[:40]!r}", code=-113)
        if message.block is not None and not takes_block:
            raise CommandError(f"{name} takes no data block", code=-102)
        if message.block is not None:
            rest = rest[:-1] if rest.endswith(",") else rest
            if not rest and parsers:
                raise _count_error(name, 0, len(parsers))
        params = [p.strip() for p in rest.split(",")] if rest else []
        if any(not p for p in params):
            raise CommandError(f"empty parameter in {name}", code=-102)
        if len(params) != len(parsers) or (takes_block and message.block is None):
            given = len(params) + (message.block is not None)
            raise _count_error(name, given, len(parsers) + takes_block)
        try:
            args = [parse(p) for parse, p in zip(parsers, params)]
        except ValueError:
            raise CommandError(f"parameters {rest[:60]!r} of {name} are not valid", code=-102) \
                from None
        if takes_block:
            args.append(self._values(message.block, name, args))
        return self._reply(action(*args))

    @staticmethod
    def _values(block: memoryview, name: str, args: list[int]) -> np.ndarray:
        if len(block) % F32.itemsize:
            raise CommandError(f"block of {len(block)} bytes is not whole float32 values",
                               code=-160)
        shape = args[2:4] if name.startswith("PROG") else (args[0], args[2])
        if min(shape) < 1:
            raise DataOutOfRange(f"shape {shape} of {name} is empty")
        wanted, given = shape[0] * shape[1], len(block) // F32.itemsize
        if given < wanted:
            raise CommandError(f"block holds {given} values, {name} needs {wanted}", code=-109)
        if given > wanted:
            raise TooMuchData(f"block holds {given} values, {name} needs {wanted}")
        return np.frombuffer(block, F32)

    @staticmethod
    def _reply(value) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, np.ndarray):
            payload = np.ascontiguousarray(value, dtype=F32).tobytes()
            size = str(len(payload)).encode()
            return b"#" + str(len(size)).encode() + size + payload + b"\n"
        return f"{value}\n".encode("ascii")


# ---------------------------------------------------------------- servers


def _front(model: CrossbarPhysics | CrossbarSCPI) -> CrossbarSCPI:
    return model if isinstance(model, CrossbarSCPI) else CrossbarSCPI(model)


class TcpServer:
    """Serves a CrossbarSCPI on TCP in background threads (one per connection)."""

    def __init__(self, front: CrossbarSCPI, host: str = "127.0.0.1", port: int = 0,
                 **reader_options):
        self.front = front
        self._reader_options = reader_options
        self._listener = socket.create_server((host, port))
        host, port = self._listener.getsockname()[:2]
        self.address = f"TCPIP::{host}::{port}::SOCKET"
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="crossbar-tcp", daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            if not select.select([self._listener], [], [], 0.1)[0]:
                continue
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                      name="crossbar-tcp-conn")
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        reader = CommandReader(conn.recv_into,
                               lambda t: bool(select.select([conn], [], [], t)[0]),
                               **self._reader_options)
        try:
            for item in reader:
                reply = self.front.handle(item)
                if reply is not None:
                    conn.sendall(reply)
        except OSError:  # the client went away
            pass
        finally:
            self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        """Stop accepting, drop every connection, and wait for the threads."""
        self._stopping.set()
        self._accepter.join()
        self._listener.close()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PtyServer(threading.Thread):
    """Serves a CrossbarSCPI on a pseudo-terminal, as a serial board would (background thread)."""

    def __init__(self, front: CrossbarSCPI, **reader_options):
        super().__init__(name="crossbar-pty", daemon=True)
        self.front = front
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no newline translation
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self.address = f"ASRL{self.path}::INSTR"
        self._stopping = threading.Event()
        self._reader = CommandReader(self._recv_into, self._wait, **reader_options)
        self.start()

    def _wait(self, timeout: float | None) -> bool:
        remaining = timeout
        while not self._stopping.is_set():
            step = 0.1 if remaining is None else min(0.1, remaining)
            if select.select([self._master], [], [], step)[0]:
                return True
            if remaining is not None:
                remaining -= step
                if remaining <= 0:
                    return False
        return False

    def _recv_into(self, view: memoryview) -> int:
        while True:
            try:
                return os.readv(self._master, [view])
            except BlockingIOError:
                if not self._wait(None):
                    return 0

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._stopping.is_set():
            if select.select([], [self._master], [], 0.1)[1]:
                view = view[os.write(self._master, view):]

    def run(self) -> None:
        for item in self._reader:
            reply = self.front.handle(item)
            if reply is not None:
                self._send(reply)

    def close(self) -> None:
        self._stopping.set()
        self.join()
        os.close(self._master)
        os.close(self._slave)

    def __enter__(self) -> PtyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_tcp(model: CrossbarPhysics | CrossbarSCPI, host: str = "127.0.0.1", port: int = 0,
              **reader_options) -> tuple[TcpServer, str]:
    """Serve `model` on TCP in the background; (server, its VISA address). close() stops it."""
    server = TcpServer(_front(model), host, port, **reader_options)
    return server, server.address


def serve_pty(model: CrossbarPhysics | CrossbarSCPI, **reader_options) -> tuple[PtyServer, str]:
    """Serve `model` on a new pseudo-terminal; (server thread, /dev/pts path)."""
    server = PtyServer(_front(model), **reader_options)
    return server, server.path


# ---------------------------------------------------------------- command line


def _tcp_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not [HOST:]PORT") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labpnn sim crossbar",
        description="Serve a simulated memristor crossbar board on its SCPI command set "
                    "until SIGINT/SIGTERM.")
    parser.add_argument("--tcp", type=_tcp_address, metavar="[HOST:]PORT",
                        help="serve on TCP (host defaults to 127.0.0.1; port 0 picks a free one)")
    parser.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal")
    parser.add_argument("--max-block-bytes", type=int, default=MAX_BLOCK,
                        help=f"largest accepted block payload (default {MAX_BLOCK})")
    physics = parser.add_argument_group("board physics (defaults in docs/crossbar.md)")
    for name, field in PhysicsOptions.model_fields.items():
        physics.add_argument(f"--{name.replace('_', '-')}", type=field.annotation,
                             metavar=field.annotation.__name__.upper(),
                             help=f"{field.description} (default {field.default})")
    return parser


def cli_main(argv: list[str]) -> int:
    """`labpnn sim crossbar ...`: serve until SIGINT/SIGTERM, then exit 0."""
    args = build_parser().parse_args(argv)
    options = {name: getattr(args, name) for name in PhysicsOptions.model_fields
               if getattr(args, name) is not None}
    try:
        front = CrossbarSCPI(CrossbarPhysics(**options))
    except ValidationError as exc:
        print(f"labpnn sim crossbar: invalid option: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    servers: list[TcpServer | PtyServer] = []
    try:
        if args.pty:
            servers.append(PtyServer(front, max_block=args.max_block_bytes))
            print(f"listening on {servers[-1].address} ({servers[-1].path})", flush=True)
        if args.tcp or not args.pty:
            host, port = args.tcp or ("127.0.0.1", 5025)
            servers.append(TcpServer(front, host, port, max_block=args.max_block_bytes))
            print(f"listening on {servers[-1].address}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        for server in servers:
            server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
