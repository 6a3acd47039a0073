"""The network OPU's wire format: length-prefixed messages over TCP.

Every message, in both directions, is

    8 bytes   two big-endian uint32: header_length, payload_length
    header    UTF-8 JSON object, header_length bytes
    payload   raw bytes, payload_length bytes (0 when the message carries no array)

When a payload is present the header describes it as "array": {"shape": [...], "dtype":
"uint8"} (C order). Requests carry {"op": ...} plus arguments; replies carry {"ok": true, ...}
or {"ok": false, "error": "what went wrong"}. Ops (see docs/optics.md):

    open       {n_components, max_n_features} -> {identity, simulated, protocol}  light source on
    close      light source off
    fit        {n_features} or array X (n, n_features) -> {n_features, exposure_us}
    transform  array X uint8 (n, n_features) -> array uint8 (n, n_components)
    identify   -> {identity}
    snapshot   -> {snapshot}
    self_test  -> {ok, code, detail}
    reset      back to the power-on settings
    inject_fault {kind, params} / clear_faults   twins only
"""

from __future__ import annotations

import json
import socket
import struct

import numpy as np

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 30
DTYPES = {"uint8": np.uint8}
_PREFIX = struct.Struct("!II")


class ProtocolError(ValueError):
    """A message that breaks the wire format; `fatal` when the stream can no longer be trusted."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


def send_message(sock: socket.socket, header: dict, array: np.ndarray | None = None) -> None:
    """Send one message; `array` (uint8) goes as the raw payload."""
    header = dict(header)
    payload = b""
    if array is not None:
        array = np.ascontiguousarray(array)
        if array.dtype.name not in DTYPES:
            raise ValueError(f"wire arrays must be one of {sorted(DTYPES)}, got {array.dtype}")
        header["array"] = {"shape": list(array.shape), "dtype": array.dtype.name}
        payload = memoryview(array).cast("B")
    head = json.dumps(header, separators=(",", ":")).encode()
    sock.sendall(_PREFIX.pack(len(head), len(payload)) + head)
    if len(payload):
        sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    """n bytes; the buffer grows as they arrive, so a declared length costs no memory."""
    buf = bytearray(min(n, 1 << 20))
    got = 0
    while got < n:
        if got == len(buf):
            buf.extend(bytes(min(n, 2 * len(buf)) - len(buf)))
        with memoryview(buf) as view:
            k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("the peer closed the connection")
        got += k
    return buf


def recv_message(sock: socket.socket, max_payload: int = MAX_PAYLOAD_BYTES,
                 stall_timeout: float | None = None) -> tuple[dict, np.ndarray | None]:
    """Receive one message: (header, array or None). The first byte may take as long as it
    takes; with `stall_timeout`, the rest of the message must keep coming (TimeoutError).

    Raises ConnectionError when the peer closes, ProtocolError for a malformed message
    (fatal=True when the lengths themselves are implausible and the stream is lost)."""
    first = _recv_exact(sock, 1)
    previous = sock.gettimeout()
    if stall_timeout is not None:
        sock.settimeout(stall_timeout)
    try:
        head_len, payload_len = _PREFIX.unpack(first + _recv_exact(sock, _PREFIX.size - 1))
        if head_len > MAX_HEADER_BYTES or payload_len > max_payload:
            raise ProtocolError(f"implausible message lengths (header {head_len} B, payload "
                                f"{payload_len} B, at most {max_payload} B): not an OPU "
                                "protocol peer?", fatal=True)
        head = _recv_exact(sock, head_len)
        payload = _recv_exact(sock, payload_len) if payload_len else None
    finally:
        sock.settimeout(previous)
    try:
        header = json.loads(head.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header must be a JSON object")
    spec = header.pop("array", None)
    if spec is None:
        if payload is not None:
            raise ProtocolError("a payload came without an 'array' description in the header")
        return header, None
    try:
        dtype = DTYPES[spec["dtype"]]
        shape = tuple(int(d) for d in spec["shape"])
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"bad array description {spec!r}: need shape and dtype in "
                            f"{sorted(DTYPES)}") from None
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if min(shape, default=0) < 0 or expected != payload_len:
        raise ProtocolError(f"array of shape {shape} {spec['dtype']} needs {expected} bytes, "
                            f"the payload has {payload_len}")
    data = np.frombuffer(payload if payload is not None else b"", dtype=dtype)
    return header, data.reshape(shape)


def parse_tcp_resource(resource: str) -> tuple[str, int]:
    """'tcp://host:port' -> (host, port); ValueError naming the resource otherwise."""
    prefix = "tcp://"
    host, _, port = resource[len(prefix):].rpartition(":") if resource.startswith(prefix) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"OPU resource {resource!r} is not tcp://host:port")
    return host.strip("[]"), int(port)
