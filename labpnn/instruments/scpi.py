"""SCPI as both ends speak it: typed errors by SCPI code, SYST:ERR? replies, reply parsers
and number formatting (the crossbar driver and its twin's server alike)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from labpnn.errors import DeviceError

FLOAT32 = np.dtype("<f4")


# ---------------------------------------------------------------- typed errors by SCPI code


class SCPIError(DeviceError):
    """An instrument reported an SCPI error: `.code` (negative) and `.scpi_message`."""

    default_code = -100

    def __init__(self, scpi_message: str, *, code: int | None = None, instrument: str = "",
                 command: str = ""):
        self.code = self.default_code if code is None else code
        self.scpi_message = scpi_message
        self.command = command
        where = f"{command!r} refused: " if command else ""
        super().__init__(f"{where}SCPI error {self.code}, {scpi_message}", instrument)


class CommandError(SCPIError):
    """-1xx: the command was not understood (syntax, header, parameters, block framing)."""


class ExecutionError(SCPIError):
    """-2xx: the command was understood but could not be executed."""

    default_code = -200


class SettingsConflict(ExecutionError):
    """-221: valid command, but the instrument's state forbids it (e.g. MVM with output off)."""

    default_code = -221


class DataOutOfRange(ExecutionError):
    """-222: a parameter outside the instrument's limits; nothing was applied."""

    default_code = -222


class TooMuchData(ExecutionError):
    """-223: a line or block longer than the command allows."""

    default_code = -223


class DeviceSpecificError(SCPIError):
    """-3xx: the instrument reports a fault of its own (hardware)."""

    default_code = -310


class QueueOverflow(DeviceSpecificError):
    """-350: the error queue overflowed; earlier errors were lost."""

    default_code = -350


_BY_CODE: dict[int, type[SCPIError]] = {-221: SettingsConflict, -222: DataOutOfRange,
                                        -223: TooMuchData, -350: QueueOverflow}
_BY_HUNDRED: dict[int, type[SCPIError]] = {-1: CommandError, -2: ExecutionError,
                                           -3: DeviceSpecificError}


def scpi_error(code: int, message: str, *, instrument: str = "", command: str = "") -> SCPIError:
    """The typed exception for an SCPI error code."""
    cls = _BY_CODE.get(code) or _BY_HUNDRED.get(-((-code) // 100), SCPIError)
    return cls(message, code=code, instrument=instrument, command=command)


_ERROR_REPLY = re.compile(r'^\s*([+-]?\d+)\s*,\s*"(.*)"\s*$', re.DOTALL)


def parse_error_reply(text: str) -> tuple[int, str] | None:
    """`<code>,"<message>"` (a SYST:ERR? reply) as (code, message); None if it is not one."""
    match = _ERROR_REPLY.match(text)
    return (int(match.group(1)), match.group(2).replace('""', '"')) if match else None


# ---------------------------------------------------------------- reply parsers


class Reply:
    """A reply parser that says what it expects, for garbled-reply messages."""

    def __init__(self, expects: str, parse: Callable[[str], Any]):
        self.expects = expects
        self.parse = parse

    def __call__(self, text: str) -> Any:
        return self.parse(text.strip())


def _numbers(kind: type, count: int) -> Callable[[str], Any]:
    def parse(text: str):
        parts = text.split(",")
        if len(parts) != count:
            raise ValueError(text)
        values = tuple(kind(p) for p in parts)
        return values if count > 1 else values[0]
    return parse


def _bool(text: str) -> bool:
    if text.upper() in ("1", "ON"):
        return True
    if text.upper() in ("0", "OFF"):
        return False
    raise ValueError(text)


FLOAT = Reply("a number", _numbers(float, 1))
INT = Reply("an integer", _numbers(int, 1))
BOOL = Reply("1 or 0", _bool)
FLOAT_PAIR = Reply("two numbers '<a>,<b>'", _numbers(float, 2))
INT_PAIR = Reply("two integers '<a>,<b>'", _numbers(int, 2))


def fmt_float(value: float) -> str:
    """A float as SCPI text without losing float64 precision."""
    return repr(float(value))
