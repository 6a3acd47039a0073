"""The SCPI front of the simulated crossbar board (../shared/specs/crossbar-scpi.md):
a stream parser, the command set on a CrossbarPhysics model, TCP and pty servers, and
`cli_main` behind `labpnn sim crossbar`.

TCP serves each connection in its own thread as a session of its own (its error queue, its
claim on the exclusive lock); one lock serialises calls into the model, which identity,
error-queue and setting queries never wait for. Malformed input never stops a server: it
becomes an error-queue entry and the parser resynchronises at the next newline. Memory and
threads are bounded: a block is capped at what its command can use, stalled transfers time
out, and at most MAX_CONNECTIONS clients are served at once.
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
import time
import tty
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from labpnn.instruments.scpi import (CommandError, DataOutOfRange, SCPIError, SettingsConflict,
                                    TooMuchData, fmt_float)
from labpnn.sim_devices.crossbar import CrossbarPhysics, PhysicsOptions

log = logging.getLogger(__name__)

MAX_LINE = 4096  # bytes of command text (a block not counted)
MAX_BLOCK = 16 << 20  # bytes of one block payload (each command is capped by its shape too)
STALL_TIMEOUT = 2.0  # s without bytes inside a block before it is dropped
LINE_TIMEOUT = 10.0  # s a TCP client may take to finish a command line (a pty waits for ever)
MAX_CONNECTIONS = 8  # TCP clients served at once
QUEUE_DEPTH = 16
KNOWN_HEADERS = 256  # header spellings whose command is remembered
MESSAGES = {0: "No error", -100: "Command error", -102: "Syntax error", -109: "Missing parameter",
            -113: "Undefined header", -160: "Block data error", -200: "Execution error",
            -221: "Settings conflict", -222: "Data out of range", -223: "Too much data",
            -310: "System error", -350: "Queue overflow"}
F32, I16, I8 = np.dtype("<f4"), np.dtype("<i2"), np.dtype("i1")


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
    `block_limit(text) -> bytes | None` says how large a block the command `text` can use
    (None: no limit beyond `max_block`); a larger declared block is discarded unread with
    -223. A block's buffer grows as its bytes arrive, so a declared size costs no memory.
    `line_timeout` (None: wait for ever, as a terminal user types) drops a line that stalls.
    """

    def __init__(self, recv_into: Callable[[memoryview], int],
                 wait: Callable[[float | None], bool], *, max_line: int = MAX_LINE,
                 max_block: int = MAX_BLOCK, stall_timeout: float = STALL_TIMEOUT,
                 line_timeout: float | None = None,
                 block_limit: Callable[[bytes], int | None] = lambda text: None):
        self._recv_into = recv_into
        self._wait = wait
        self.max_line, self.max_block, self.stall_timeout = max_line, max_block, stall_timeout
        self.line_timeout, self.block_limit = line_timeout, block_limit
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
            elif not self._fill(self.line_timeout if self._buf else None):
                return None if self._eof else self._stalled("command line")

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
        text = bytes(self._buf[:at])
        limit = self.block_limit(text)
        limit = self.max_block if limit is None else min(limit, self.max_block)
        del self._buf[:at + 2 + ndigits]
        if length > limit:
            return self._discard(length, f"block of {length} bytes exceeds the {limit} "
                                         f"{text[:20].decode('ascii', 'replace').split()[0]!r} can use")
        got = min(length, len(self._buf))
        payload = self._grow(length, got)
        payload[:got] = self._buf[:got]
        del self._buf[:got]
        while got < length:  # large payloads go straight into place
            if self._eof or not self._wait(self.stall_timeout):
                return self._stalled(f"block ({got} of {length} bytes)")
            payload = self._grow(length, got)
            with memoryview(payload) as view:
                n = self._recv_into(view[got:length])
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
            item.block = memoryview(self._payload)[:length]
        return item

    def _grow(self, length: int, got: int) -> bytearray:
        """The payload buffer, with room for the next bytes of a `length`-byte block (it
        grows as they come; a new buffer, as the last message may still hold a view)."""
        want = min(length, max(got + len(self._chunk), 2 * got))
        if len(self._payload) < want:
            grown = bytearray(want)
            grown[:got] = memoryview(self._payload)[:got]
            self._payload = grown
        return self._payload

    def _discard(self, length: int, detail: str) -> ParseError | None:
        """Read past a refused block (and its newline) without keeping it."""
        dropped = min(length, len(self._buf))
        del self._buf[:dropped]
        while dropped < length:
            if self._eof or not self._wait(self.stall_timeout):
                self._buf.clear()
                return None if self._eof else ParseError(-223, f"{detail}; input stalled")
            with memoryview(self._chunk) as view:
                n = self._recv_into(view[:min(len(view), length - dropped)])
            if n == 0:
                self._eof = True
                return None
            dropped += n
        if self._need(1) and self._buf[0] == ord("\n"):
            del self._buf[:1]
        return ParseError(-223, detail)

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


@dataclass(frozen=True)
class Command:
    """One entry of the command table."""

    nodes: list[tuple[str, str, bool]]
    query: bool
    name: str
    parsers: tuple[Callable[[str], object], ...]
    action: Callable[..., object]
    block: np.dtype | None  # the dtype of its trailing block, if it takes one
    board: bool  # runs under the board lock (touches the physics beyond a setting read)
    changes: bool  # changes the board's state: refused while another session holds the lock
    session: bool  # its action takes the session first


# commands that change nothing, though they are not queries
_HARMLESS = {"*CLS", "SYSTem:LOCK:RELease"}
# queries that change the board (they apply voltages)
_ACTING = {"MEASure:MVM?", "MEASure:MVM:CODE?"}
# commands whose action takes the session: its error queue, its lock, its watchdog
_PER_SESSION = {"*RST", "*CLS", "SYSTem:ERRor[:NEXT]?", "SYSTem:WATChdog", "SYSTem:LOCK:REQuest?",
                "SYSTem:LOCK:RELease", "SYSTem:LOCK:OWNer?"}
# queries that run under the board lock (the others read a setting, answered at once)
_MEASURING = {"*TST?", "MEASure:CONDuctance?", "MEASure:MVM?", "MEASure:MVM:CODE?",
              "DIAGnostic:ADC?"}
# commands that run without it (sessions and the watchdog have a lock of their own)
_FREE = {"*CLS", "SYSTem:LOCK:RELease", "SYSTem:WATChdog", "SYSTem:WATChdog:RESet"}


class Session:
    """One client of the board (a TCP connection, or the serial port): its own error queue."""

    def __init__(self, board: CrossbarSCPI):
        self.board = board
        self.errors = ErrorQueue()

    def handle(self, item: Message | ParseError) -> bytes | None:
        """Execute one message; the reply to send (None for commands and failed queries)."""
        return self.board.handle(item, self)

    def receiver(self, recv_into: Callable[[memoryview], int]) -> Callable[[memoryview], int]:
        """`recv_into` that counts every byte received as traffic for the watchdog (a large
        block on a slow link is arriving, not silence)."""
        def receive(view: memoryview) -> int:
            n = recv_into(view)
            self.board._traffic(self)
            return n
        return receive

    def close(self) -> None:
        """The client left: its lock goes with it (an armed watchdog keeps counting)."""
        self.board.release(self)


class CrossbarSCPI:
    """The board's command set on a CrossbarPhysics model: sessions, the exclusive lock and
    the watchdog (../shared/specs/crossbar-scpi.md, revision 2).

    `handle(item)` and `errors` are those of a default session (a serial port's, or tests');
    each TCP connection gets its own from `session()`. One lock serialises calls into the
    physics; identity, error-queue, lock and setting queries do not wait for it.
    """

    def __init__(self, physics: CrossbarPhysics, clock: Callable[[], float] = time.monotonic):
        self.physics = physics
        self.lock = threading.Lock()
        self.clock = clock
        self._owner: Session | None = None  # of the exclusive lock
        self._sessions = threading.Lock()  # guards _owner and the watchdog's fields
        self._watchdog_s = 0.0
        self._watchdog_session: Session | None = None
        self._last_traffic = clock()
        self._watchdog_thread: threading.Thread | None = None
        self.default_session = Session(self)
        self.errors = self.default_session.errors
        p = physics
        table = {  # header: (parameter parsers, action)
            "*IDN?": ((), p.identity),
            "*RST": ((), self._reset),
            "*CLS": ((), lambda s: s.errors.clear()),
            "*OPC?": ((), lambda: "1"),
            "*TST?": ((), lambda: str(p.self_test_code())),
            "SYSTem:ERRor[:NEXT]?": ((), lambda s: s.errors.pop()),
            "SYSTem:WATChdog?": ((), lambda: fmt_float(self._watchdog_s)),
            "SYSTem:WATChdog": ((float,), self._arm_watchdog),
            "SYSTem:WATChdog:RESet": ((), lambda: None),
            "SYSTem:LOCK:REQuest?": ((), self._request_lock),
            "SYSTem:LOCK:RELease": ((), self.release),
            "SYSTem:LOCK:OWNer?": ((), self._lock_owner),
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
            "MEASure:MVM:CODE?": ((_int,) * 5, self._mvm_codes),
            "CONFigure:ADC:BITS?": ((), lambda: str(p.adc_bits)),
            "CONFigure:ADC:BITS": ((_int,), lambda b: setattr(p, "adc_bits", b)),
            "CONFigure:ADC:RANGe?": ((), lambda: fmt_float(p.adc_range)),
            "CONFigure:ADC:RANGe": ((float,), lambda i: setattr(p, "adc_range", i)),
            "CONFigure:ADC:LSB?": ((), lambda: fmt_float(p.adc_lsb)),
            "CONFigure:DAC:BITS?": ((), lambda: str(p.dac_bits)),
            "CONFigure:DAC:LSB?": ((), lambda: fmt_float(p.dac_lsb)),
            "DIAGnostic:ADC?": ((), p.adc_health),
        }
        blocks = {"PROGram:CONDuctance": F32, "MEASure:MVM?": F32, "MEASure:MVM:CODE?": I8}
        self._known: dict[str, Command] = {}  # header as sent (upper case) -> its command
        self._commands = []
        for header, (parsers, action) in table.items():
            query = header.endswith("?")
            self._commands.append(Command(
                *_pattern(header), header, parsers, action, blocks.get(header),
                board=header in _MEASURING if query else header not in _FREE,
                changes=header in _ACTING or not (query or header in _HARMLESS),
                session=header in _PER_SESSION))

    # ---------------------------------------------------------------- sessions

    def session(self) -> Session:
        """A new session (one per TCP connection)."""
        return Session(self)

    def _request_lock(self, session: Session) -> str:
        with self._sessions:
            if self._owner is None:
                self._owner = session
            return "1" if self._owner is session else "0"

    def release(self, session: Session | None = None) -> None:
        """Give up the exclusive lock, if `session` (default: the default session) holds it."""
        with self._sessions:
            if self._owner is (session or self.default_session):
                self._owner = None

    def _lock_owner(self, session: Session) -> str:
        owner = self._owner
        return "NONE" if owner is None else "SELF" if owner is session else "OTHER"

    # ---------------------------------------------------------------- watchdog

    def _arm_watchdog(self, session: Session, seconds: float) -> None:
        if not 0 <= seconds <= 3600:  # NaN fails too
            raise DataOutOfRange(f"watchdog {seconds:g} s outside 0..3600 s")
        with self._sessions:
            self._watchdog_s, self._watchdog_session = float(seconds), session
            self._last_traffic = self.clock()
            if seconds and (self._watchdog_thread is None or not self._watchdog_thread.is_alive()):
                self._watchdog_thread = threading.Thread(target=self._watch, daemon=True,
                                                         name="crossbar-watchdog")
                self._watchdog_thread.start()

    def stop_watchdog(self) -> None:
        """Disarm the watchdog and end its thread (the server is stopping)."""
        with self._sessions:
            self._watchdog_s, thread = 0.0, self._watchdog_thread
        if thread is not None:
            thread.join()

    def _traffic(self, session: Session) -> None:
        if session is self._watchdog_session:
            self._last_traffic = self.clock()

    def _watch(self) -> None:
        while (period := self._watchdog_s) > 0:
            time.sleep(min(period / 20, 0.05))
            self.check_watchdog()

    def check_watchdog(self) -> bool:
        """Outputs off (and -310 to the arming session) if the watchdog expired; True if so."""
        with self._sessions:
            period, session = self._watchdog_s, self._watchdog_session
            expired = period > 0 and self.clock() - self._last_traffic > period
        if not expired or not self.physics.output:
            return False
        with self.lock:
            if not self.physics.output:
                return False
            self.physics.output = False
        log.warning("crossbar twin: no traffic for %g s: watchdog expired, outputs off", period)
        if session is not None:
            session.errors.push(-310, "Watchdog expired")
        return True

    # ---------------------------------------------------------------- actions

    def _reset(self, session: Session) -> None:
        self.physics.reset()
        session.errors.clear()

    def _program(self, r0: int, c0: int, rows: int, cols: int, values: np.ndarray) -> None:
        self.physics.program(r0, c0, values.reshape(rows, cols))

    def _mvm(self, n: int, r0: int, rows: int, c0: int, cols: int, values: np.ndarray):
        return self.physics.mvm(values.reshape(n, rows), r0, c0, cols)

    def _mvm_codes(self, n: int, r0: int, rows: int, c0: int, cols: int, values: np.ndarray):
        return self.physics.mvm_codes(values.reshape(n, rows), r0, c0, cols)

    # ---------------------------------------------------------------- execution

    def handle(self, item: Message | ParseError, session: Session | None = None) -> bytes | None:
        """Execute one message in `session` (default: the default session); the reply to
        send (None for commands and failed queries)."""
        session = session or self.default_session
        if isinstance(item, ParseError):
            session.errors.push(item.code, item.detail)
            return None
        self._traffic(session)
        try:
            return self._execute(item, session)
        except SCPIError as exc:
            session.errors.push(exc.code, exc.scpi_message)
        except Exception as exc:  # a bug in the twin must not take the server down
            log.exception("crossbar twin failed on %r", item.text[:80])
            session.errors.push(-200, f"internal: {exc}")
        finally:
            self._traffic(session)
        return None

    def _lookup(self, text: str) -> tuple[Command, str]:
        header, _, rest = text.partition(" ")
        return self._command(header.upper()), rest.strip()

    def _command(self, header: str) -> Command:
        """The command a header names (remembered: a pass looks its MVM header up twice)."""
        command = self._known.get(header)
        if command is not None:
            return command
        if not _HEADER.match(header):
            raise CommandError(f"malformed header {header[:40]!r}", code=-102)
        query = header.endswith("?")
        words = header.lstrip(":").rstrip("?").split(":")
        for command in self._commands:
            if command.query == query and _match(command.nodes, words):
                if len(self._known) < KNOWN_HEADERS:  # bounded: any spelling is a header
                    self._known[header] = command
                return command
        raise CommandError(f"{header[:40]!r}", code=-113)

    def _arguments(self, command: Command, rest: str, block: bool) -> list:
        name, parsers = command.name, command.parsers
        if block and command.block is None:
            raise CommandError(f"{name} takes no data block", code=-102)
        if block:
            rest = rest[:-1] if rest.endswith(",") else rest
            if not rest and parsers:
                raise _count_error(name, 0, len(parsers))
        params = [p.strip() for p in rest.split(",")] if rest else []
        if any(not p for p in params):
            raise CommandError(f"empty parameter in {name}", code=-102)
        takes_block = command.block is not None
        if len(params) != len(parsers) or (takes_block and not block):
            raise _count_error(name, len(params) + block, len(parsers) + takes_block)
        try:
            return [parse(p) for parse, p in zip(parsers, params)]
        except ValueError:
            raise CommandError(f"parameters {rest[:60]!r} of {name} are not valid", code=-102) \
                from None

    def block_limit(self, text: bytes) -> int | None:
        """Bytes the command `text` (what precedes its block) can use, from the shape its
        parameters give; None when it does not parse (execution reports why)."""
        try:
            command, rest = self._lookup(text.decode("ascii").strip())
            args = self._arguments(command, rest, True)
        except (SCPIError, UnicodeDecodeError):
            return None
        rows, cols = self.physics.array_shape
        if command.name.startswith("PROG"):
            shape = args[2:4]
            return max(0, min(shape[0], rows)) * max(0, min(shape[1], cols)) * F32.itemsize
        return max(0, args[0]) * max(0, min(args[2], rows)) * command.block.itemsize

    def _execute(self, message: Message, session: Session) -> bytes | None:
        command, rest = self._lookup(message.text)
        args = self._arguments(command, rest, message.block is not None)
        if command.changes and self._owner not in (None, session):
            raise SettingsConflict(f"{command.name} refused: another session holds the lock "
                                   "(SYST:LOCK:OWN?)")
        if command.block is not None:
            args.append(self._values(message.block, command, args))
        if command.session:
            args.insert(0, session)
        if not command.board:
            return self._reply(command.action(*args))
        with self.lock:
            if command.changes and self._owner not in (None, session):  # taken while we waited
                raise SettingsConflict(f"{command.name} refused: another session holds the lock")
            return self._reply(command.action(*args))

    @staticmethod
    def _values(block: memoryview, command: Command, args: list[int]) -> np.ndarray:
        dtype, name = command.block, command.name
        if len(block) % dtype.itemsize:
            raise CommandError(f"block of {len(block)} bytes is not whole {dtype.name} "
                               "values", code=-160)
        shape = args[2:4] if name.startswith("PROG") else (args[0], args[2])
        if min(shape) < 1:
            raise DataOutOfRange(f"shape {shape} of {name} is empty")
        wanted, given = shape[0] * shape[1], len(block) // dtype.itemsize
        if given < wanted:
            raise CommandError(f"block holds {given} values, {name} needs {wanted}", code=-109)
        if given > wanted:
            raise TooMuchData(f"block holds {given} values, {name} needs {wanted}")
        return np.frombuffer(block, dtype)

    @staticmethod
    def _reply(value) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value, I16 if value.dtype == I16 else F32)
            size = str(array.nbytes).encode()
            # one copy of the payload (tobytes and concatenation made three)
            return b"".join((b"#%d" % len(size), size, memoryview(array).cast("B"), b"\n"))
        return f"{value}\n".encode("ascii")


# ---------------------------------------------------------------- servers


def _front(model: CrossbarPhysics | CrossbarSCPI) -> CrossbarSCPI:
    return model if isinstance(model, CrossbarSCPI) else CrossbarSCPI(model)


class TcpServer:
    """Serves a CrossbarSCPI on TCP in background threads (one per connection, each its own
    session); at most `max_connections` at once, the next ones are closed on arrival."""

    def __init__(self, front: CrossbarSCPI, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = MAX_CONNECTIONS, **reader_options):
        self.front = front
        self.max_connections = max_connections
        self._reader_options = {"line_timeout": LINE_TIMEOUT, "block_limit": front.block_limit,
                                **reader_options}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family)
        host, port = self._listener.getsockname()[:2]
        self.address = f"TCPIP::{f'[{host}]' if ':' in host else host}::{port}::SOCKET"
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
                conn, peer = self._listener.accept()
            except OSError:
                return
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) >= self.max_connections:
                log.warning("crossbar twin: refused %s: %d connections already", peer,
                            self.max_connections)
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                      name="crossbar-tcp-conn")
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        session = self.front.session()
        reader = CommandReader(session.receiver(conn.recv_into),
                               lambda t: bool(select.select([conn], [], [], t)[0]),
                               **self._reader_options)
        try:
            for item in reader:
                reply = session.handle(item)
                if reply is not None:
                    conn.sendall(reply)
        except OSError:  # the client went away
            pass
        finally:
            session.close()
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
        self.front.stop_watchdog()

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
        self._reader = CommandReader(front.default_session.receiver(self._recv_into),
                                     self._wait,
                                     **{"block_limit": front.block_limit, **reader_options})
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
        self.front.stop_watchdog()
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
    """'[HOST:]PORT', HOST an IPv4 address, a name, or an IPv6 address in brackets."""
    host, _, port = text.rpartition(":")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise argparse.ArgumentTypeError(f"{text!r}: write an IPv6 host in brackets, "
                                         "e.g. [::1]:5025")
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not [HOST:]PORT (port 0..65535)")
    return host.strip("[]") or "127.0.0.1", int(port)


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
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help=f"TCP clients served at once (default {MAX_CONNECTIONS})")
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
            try:
                servers.append(TcpServer(front, host, port, args.max_connections,
                                         max_block=args.max_block_bytes))
            except OSError as exc:
                print(f"labpnn sim crossbar: cannot listen on {host}:{port}: {exc}",
                      file=sys.stderr)
                return 2
            print(f"listening on {servers[-1].address}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        for server in servers:
            server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
