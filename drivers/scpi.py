"""What every SCPI driver shares: a checked PyVISA session with IEEE 488.2 blocks, and
declarative settings (`control`, `measurement`) in the spirit of
PyMeasure's Instrument.control/measurement.

A driver class holds `self.scpi` (an SCPISession) and `self._lock`; its properties are
declared with `control`/`measurement`, each access one checked round trip under the lock.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import pyvisa
import serial

from labpnn.errors import DeviceError, TransportError
from labpnn.instruments.scpi import FLOAT, FLOAT32, Reply, fmt_float, parse_error_reply, scpi_error

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the session


def visa_library(option: str | None = None) -> str:
    """The VISA backend to use: the bench option, else $PYVISA_LIBRARY, else pyvisa-py ("@py").
    "@sim" is pyvisa-sim (its YAML after the "@": "path/to/board.yaml@sim"), a path NI-VISA or
    another vendor's libvisa."""
    return option or os.environ.get("PYVISA_LIBRARY") or "@py"


def open_resource(resource: str, timeout_ms: int, baud_rate: int | None = None,
                  library: str | None = None):
    """Open a PyVISA message-based resource with "\\n" framing, on the backend
    visa_library(library) names."""
    rm = pyvisa.ResourceManager(visa_library(library))
    kwargs: dict[str, Any] = {"read_termination": "\n", "write_termination": "\n",
                              "timeout": timeout_ms}
    if baud_rate is not None and resource.upper().startswith("ASRL"):
        kwargs["baud_rate"] = baud_rate
    return rm.open_resource(resource, **kwargs)


def _interface_of(resource, kind: type):
    """The `kind` object (socket, serial port) under a pyvisa-py session, else None."""
    try:
        interface = resource.visalib.sessions[resource.session].interface
    except (AttributeError, KeyError, TypeError):
        return None
    return interface if isinstance(interface, kind) else None


class _SocketReplies:
    """Replies read straight from a pyvisa-py TCP session's socket: a block's payload lands in
    its array by recv_into (pyvisa-py reads the header byte by byte, with a select() each, and
    copies a payload three times). Starts from the bytes pyvisa-py holds; on a clean exit hands
    back those it read ahead (on a failure they are dropped, as resync() drops the rest)."""

    def __init__(self, sock: socket.socket, session, timeout_s: float | None):
        self._sock, self._session, self._timeout = sock, session, timeout_s
        self._buf = bytearray(session._pending_buffer)
        session._pending_buffer.clear()

    def __enter__(self) -> _SocketReplies:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self._session._pending_buffer[:0] = self._buf

    def _wait(self) -> None:
        if not select.select([self._sock], [], [], self._timeout)[0]:
            raise pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_timeout)

    @staticmethod
    def _closed() -> None:
        # at once, where pyvisa-py would wait out the timeout on a closed link
        raise ConnectionError("the board closed the connection")

    def _fill(self) -> None:
        self._wait()
        data = self._sock.recv(1 << 16)
        if not data:
            self._closed()
        self._buf += data

    def take(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def line(self) -> str:
        while (end := self._buf.find(b"\n")) < 0:
            self._fill()
        out = self._buf[:end].decode("ascii", "replace")
        del self._buf[:end + 1]
        return out

    def into(self, view: memoryview) -> None:
        got = min(len(view), len(self._buf))
        view[:got] = self._buf[:got]
        del self._buf[:got]
        while got < len(view):
            self._wait()
            n = self._sock.recv_into(view[got:])
            if n == 0:
                self._closed()
            got += n


class SCPISession:
    """A PyVISA resource spoken to in SCPI: checked writes, typed errors, float32 blocks.

    Every failure becomes a DeviceError naming the instrument and the command: SCPI errors
    from the error queue as SCPIError subclasses, timeouts and lost links as TransportError,
    garbled replies as DeviceError saying what was expected and what came.
    """

    def __init__(self, resource, instrument: str):
        self.resource = resource
        self.instrument = instrument
        self._sock = _interface_of(resource, socket.socket)
        # pyvisa-py reads a serial port byte by byte (~25 us each); it buffers nothing
        # itself, so block payloads can be read from the port in one call
        self._port = _interface_of(resource, serial.SerialBase)
        self.last_io = time.monotonic()  # of the last exchange (the watchdog's keep-alive)
        if self._sock is not None:
            # pyvisa-py leaves Nagle on: a block written in pieces would wait ~40 ms for an ACK
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # and receives in 4 KiB pieces by default; large replies go faster in large ones
            self._visa_session = resource.visalib.sessions[resource.session]
            self._visa_session.max_recv_size = 1 << 20
            if not isinstance(getattr(self._visa_session, "_pending_buffer", None), bytearray):
                self._sock = None  # not the pyvisa-py session this module knows: its own reads

    # -- plumbing

    @contextmanager
    def _io(self, command: str) -> Iterator[None]:
        """Turn link failures into TransportError naming the command; note the traffic."""
        self.last_io = time.monotonic()
        try:
            yield
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                self.resync()  # a late reply must not be taken for the next one's
                raise TransportError(f"no reply to {command!r} within {self.resource.timeout:g} ms",
                                     self.instrument) from None
            raise TransportError(f"link failed during {command!r}: {exc}", self.instrument) from None
        except (OSError, pyvisa.errors.InvalidSession) as exc:
            raise TransportError(f"link lost during {command!r}: {exc}", self.instrument) from None

    def _garbled(self, command: str, expected: str, got: bytes | str) -> DeviceError:
        """Resynchronise after an unexpected reply and return the error to raise."""
        self.resync()
        text = got.decode("ascii", "backslashreplace") if isinstance(got, bytes) else got
        return DeviceError(f"expected {expected} in reply to {command!r}, got {text[:80]!r}",
                           self.instrument)

    def resync(self) -> None:
        """Discard whatever the instrument sent that was not read."""
        ops = pyvisa.constants.BufferOperation
        try:
            if self._sock is None:
                self.resource.flush(ops.discard_read_buffer)
                return
            # pyvisa-py's own discard loops forever on a closed socket: drain it here
            self.resource.flush(ops.discard_read_buffer_no_io)
            while select.select([self._sock], [], [], 0.05)[0] and self._sock.recv(1 << 16):
                pass
        except Exception as exc:  # best effort: the caller is already reporting an error
            log.debug("%s: could not discard the read buffer: %s", self.instrument, exc)

    # -- text

    def write(self, command: str, check: bool = True) -> None:
        """Send a command; with `check`, read the error queue and raise what it holds."""
        with self._io(command):
            self.resource.write(command)
        if check:
            self.check_errors(command)

    def query(self, command: str, reply: Reply | None = None) -> Any:
        """Send a query and return its reply line, parsed by `reply` when given."""
        with self._io(command):
            text = self.resource.query(command)
        if reply is None:
            return text
        try:
            return reply(text)
        except ValueError:
            raise self._garbled(command, reply.expects, text) from None

    def check_errors(self, command: str) -> None:
        """Drain SYST:ERR?; raise the first entry as a typed SCPIError if there is one."""
        entries = []
        for _ in range(17):  # queue depth 16, plus the overflow marker
            with self._io("SYST:ERR?"):
                text = self.resource.query("SYST:ERR?")
            entry = parse_error_reply(text)
            if entry is None:
                raise self._garbled("SYST:ERR?", "an error entry '<code>,\"<message>\"'", text)
            if entry[0] == 0:
                break
            entries.append(entry)
        if entries:
            code, message = entries[0]
            if len(entries) > 1:
                message += f" (and {len(entries) - 1} more queued: {[c for c, _ in entries[1:]]})"
            raise scpi_error(code, message, instrument=self.instrument, command=command)

    # -- blocks

    def _send_block(self, command: str, values: np.ndarray | Callable[[], np.ndarray],
                    tail: bytes = b"") -> None:
        """`command` and `values` (a little-endian array, sent as they are, or a function
        that makes it when it is due) as a block, then `tail` (more commands,
        newline-terminated)."""
        payload = np.ascontiguousarray(values() if callable(values) else values).reshape(-1)
        if self._sock is None:
            datatype = {"<f4": "f", "|i1": "b"}[payload.dtype.str]
            self.resource.write_binary_values(command, payload, datatype=datatype,
                                              is_big_endian=False)
            for line in tail.decode("ascii").splitlines():
                self.resource.write(line)
            return
        # TCP: straight to the socket in one gathered write, no copies (pyvisa-py writes in
        # 4 KiB select()ed pieces); the socket's own timeout bounds the blocking sends
        size = str(payload.nbytes).encode()
        head = command.encode("ascii") + b"#" + str(len(size)).encode() + size
        parts = [memoryview(head), memoryview(payload).cast("B"), memoryview(b"\n" + tail)]
        self._sock.settimeout(self._timeout_s())
        try:
            if not hasattr(self._sock, "sendmsg"):  # Windows: one write per part
                for part in parts:
                    self._sock.sendall(part)
                parts = []
            while parts:
                sent = self._sock.sendmsg(parts)
                while parts and sent >= len(parts[0]):
                    sent -= len(parts[0])
                    parts.pop(0)
                if parts:
                    parts[0] = parts[0][sent:]
        except TimeoutError:
            raise TransportError(f"could not send {command!r} within "
                                 f"{self.resource.timeout:g} ms", self.instrument) from None
        finally:
            self._sock.settimeout(None)

    def _read_payload(self, size: int) -> bytes:
        if self._port is None:
            return self.resource.read_bytes(size, chunk_size=size)
        data = self._port.read(size)  # the port's timeout is the session's
        if len(data) < size:
            raise pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_timeout)
        return data

    def write_block(self, command: str, values: np.ndarray) -> None:
        """Send `command` followed by `values` as a float32 block; check the error queue."""
        with self._io(command):
            self._send_block(command, np.asarray(values, FLOAT32))
        self.check_errors(command)

    def _timeout_s(self) -> float | None:
        """The session's timeout in seconds (None: infinite)."""
        ms = self.resource.timeout
        return None if ms is None or ms == float("inf") else ms / 1000

    def _replies(self) -> _SocketReplies:
        return _SocketReplies(self._sock, self._visa_session, self._timeout_s())

    def _read_reply(self, command: str, count: int, dtype: np.dtype,
                    reader: _SocketReplies | None = None
                    ) -> tuple[np.ndarray | None, tuple[int, str]]:
        """The reply to a block query sent with SYST:ERR? behind it: (the block's `count`
        values, or None when the query failed, and the error entry that came with it).
        `reader`: on TCP, the socket reader (_replies()) to read with."""
        nbytes = count * dtype.itemsize
        take = reader.take if reader is not None else self.resource.read_bytes
        # payload bytes may be 0x0A (the socket reader has no termination character)
        with nullcontext() if reader is not None else self.resource.read_termination_context(None):
            first = take(1)
            values = None
            if first == b"#":
                digits = take(1)
                size = take(int(digits)) if digits.isdigit() else b""
                if not size.isdigit() or int(size) != nbytes:
                    raise self._garbled(command, f"a block of {nbytes} bytes", first + digits + size)
                if reader is not None:
                    values = np.empty(count, dtype)
                    reader.into(memoryview(values).cast("B"))
                    end = take(1)
                else:
                    payload = self._read_payload(nbytes + 1)
                    values, end = np.frombuffer(payload, dtype, count), payload[-1:]
                if end != b"\n":
                    raise self._garbled(command, "a newline after the block", end)
                first = b""
        text = first.decode("ascii", "replace") + (reader.line() if reader is not None
                                                   else self.resource.read())
        entry = parse_error_reply(text)
        if entry is None or (values is None and entry[0] == 0):
            raise self._garbled(command if values is None else "SYST:ERR?",
                                f"a block of {nbytes} bytes" if values is None
                                else "an error entry '<code>,\"<message>\"'", text)
        return values, entry

    def query_block(self, command: str, count: int, values: np.ndarray | None = None,
                    dtype: np.dtype = FLOAT32) -> np.ndarray:
        """Send a block query (with `values` as its trailing block when given) and return
        the `count` values (`dtype`) of the reply block.

        A failed query sends no reply, so SYST:ERR? is sent right behind it: the first
        byte back is either the reply block's '#' or the error entry.
        """
        with self._io(command):
            if values is None:
                self.resource.write(command)
                self.resource.write("SYST:ERR?")
            else:
                self._send_block(command, values, b"SYST:ERR?\n")
            if self._sock is None:
                result, entry = self._read_reply(command, count, dtype)
            else:
                with self._replies() as reader:
                    result, entry = self._read_reply(command, count, dtype, reader)
        if entry[0] != 0:
            if result is None:
                self.check_errors(command)  # drain what else is queued
            raise scpi_error(*entry, instrument=self.instrument, command=command)
        return result

    def query_blocks(self, requests: list[tuple[str, np.ndarray | Callable[[], np.ndarray], int]],
                     dtype: np.dtype) -> list[np.ndarray]:
        """Block queries (command, values, count of reply values) in a pipeline on TCP: a
        thread makes (values may be a function, see _send_block) and sends request k+1 while
        the board computes request k and its reply is read. Replies in order, `dtype`. Over
        serial, or for one request, one at a time."""
        if self._sock is None or len(requests) < 2:
            return [self.query_block(c, count, v, dtype) for c, v, count in requests]
        failure: list[BaseException] = []

        def send() -> None:
            try:
                for command, values, _ in requests:
                    self._send_block(command, values, b"SYST:ERR?\n")
            except BaseException as exc:  # reported by the reader below
                failure.append(exc)

        sender = threading.Thread(target=send, name=f"{self.instrument}-send", daemon=True)
        results, error = [], None
        with self._io(requests[0][0]):
            sender.start()
            try:
                with self._replies() as reader:
                    for command, _, count in requests:
                        if failure:
                            raise failure[0]
                        values, entry = self._read_reply(command, count, dtype, reader)
                        if entry[0] != 0 and error is None:  # read on: the later replies follow
                            error = scpi_error(*entry, instrument=self.instrument, command=command)
                        results.append(values)
            finally:
                sender.join()
        if error is not None:
            self.check_errors(requests[0][0])
            raise error
        return results

    def close(self) -> None:
        self.resource.close()


# ---------------------------------------------------------------- declarative settings


def control(get_command: str, set_command: str, doc: str, reply: Reply = FLOAT,
            fmt: Callable[[Any], str] = fmt_float) -> property:
    """A read/write setting: reading sends `get_command` and parses the reply with `reply`;
    assigning sends `set_command.format(fmt(value))` and checks the error queue.

    The owner provides `scpi` (an SCPISession), `_lock` and `_settings_changed()`.
    """

    def fget(self):
        with self._lock:
            return self.scpi.query(get_command, reply)

    def fset(self, value):
        with self._lock:
            self._settings_changed()
            self.scpi.write(set_command.format(fmt(value)))

    return property(fget, fset, doc=doc)


def measurement(command: str, doc: str, reply: Reply = FLOAT) -> property:
    """A read-only value: reading sends `command` and parses the reply with `reply`."""

    def fget(self):
        with self._lock:
            return self.scpi.query(command, reply)

    return property(fget, doc=doc)
