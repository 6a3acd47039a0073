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
from contextlib import contextmanager
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
            resource.visalib.sessions[resource.session].max_recv_size = 1 << 20

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

    def _send_block(self, command: str, values: np.ndarray, tail: bytes = b"") -> None:
        """`command` and `values` (a little-endian array, sent as they are) as a block,
        then `tail` (more commands, newline-terminated)."""
        payload = np.ascontiguousarray(values).reshape(-1)
        if self._sock is None:
            datatype = {"<f4": "f", "|i1": "b"}[payload.dtype.str]
            self.resource.write_binary_values(command, payload, datatype=datatype,
                                              is_big_endian=False)
            for line in tail.decode("ascii").splitlines():
                self.resource.write(line)
            return
        # TCP: straight to the socket, no copies (pyvisa-py writes in 4 KiB select()ed pieces)
        size = str(payload.nbytes).encode()
        head = command.encode("ascii") + b"#" + str(len(size)).encode() + size
        deadline = time.monotonic() + self.resource.timeout / 1000
        for part in (memoryview(head), memoryview(payload).cast("B"), memoryview(b"\n" + tail)):
            while part:
                if not select.select([], [self._sock], [], max(deadline - time.monotonic(), 0))[1]:
                    raise TransportError(f"could not send {command!r} within "
                                         f"{self.resource.timeout:g} ms", self.instrument)
                part = part[self._sock.send(part):]

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

    def _read_reply(self, command: str, nbytes: int) -> tuple[bytes | None, tuple[int, str]]:
        """The reply to a block query sent with SYST:ERR? behind it: (the block's payload,
        or None when the query failed, and the error entry that came with it)."""
        with self.resource.read_termination_context(None):  # payload bytes may be 0x0A
            first = self.resource.read_bytes(1)
            payload = None
            if first == b"#":
                digits = self.resource.read_bytes(1)
                size = self.resource.read_bytes(int(digits)) if digits.isdigit() else b""
                if not size.isdigit() or int(size) != nbytes:
                    raise self._garbled(command, f"a block of {nbytes} bytes", first + digits + size)
                payload = self._read_payload(nbytes + 1)
                if payload[-1:] != b"\n":
                    raise self._garbled(command, "a newline after the block", payload[-8:])
                first = b""
        text = first.decode("ascii", "replace") + self.resource.read()
        entry = parse_error_reply(text)
        if entry is None or (payload is None and entry[0] == 0):
            raise self._garbled(command if payload is None else "SYST:ERR?",
                                f"a block of {nbytes} bytes" if payload is None
                                else "an error entry '<code>,\"<message>\"'", text)
        return payload, entry

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
            payload, entry = self._read_reply(command, count * dtype.itemsize)
        if entry[0] != 0:
            if payload is None:
                self.check_errors(command)  # drain what else is queued
            raise scpi_error(*entry, instrument=self.instrument, command=command)
        return np.frombuffer(payload, dtype, count)

    def query_blocks(self, requests: list[tuple[str, np.ndarray, int]], dtype: np.dtype
                     ) -> list[np.ndarray]:
        """Block queries (command, values, count of reply values) in a pipeline on TCP: a
        thread sends request k+1 while the board computes request k and its reply is read.
        Replies in order, `dtype`. Over serial, or for one request, one at a time."""
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
                for command, _, count in requests:
                    if failure:
                        raise failure[0]
                    payload, entry = self._read_reply(command, count * dtype.itemsize)
                    if entry[0] != 0 and error is None:  # read on: the later replies follow
                        error = scpi_error(*entry, instrument=self.instrument, command=command)
                    results.append(payload)
            finally:
                sender.join()
        if error is not None:
            self.check_errors(requests[0][0])
            raise error
        return [np.frombuffer(payload, dtype, count)
                for payload, (_, _, count) in zip(results, requests)]

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
