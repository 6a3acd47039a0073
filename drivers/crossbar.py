"""Driver of the memristor crossbar board over PyVISA (pyvisa-py: serial ASRL or TCPIP
SOCKET), speaking the command set of ../shared/specs/crossbar-scpi.md.

The weight mapping and tiling are MappedCrossbar's (drivers/crossbar_mapping.py), shared
with the twin; this module adds the wire: settings as declarative SCPI controls, the
primitives as commands, and the error queue checked after every write that can fail.
"""

from __future__ import annotations

import re
import threading
from functools import partial
from typing import Any

import numpy as np
from pydantic import Field

from labpnn.drivers import scpi
from labpnn.instruments.crossbar_mapping import BoardConfig, MappedCrossbar, MappingOptions, dac_codes
from labpnn.drivers.scpi import control, measurement
from labpnn.instruments.scpi import BOOL, FLOAT32, FLOAT_PAIR, INT, INT_PAIR, fmt_float
from labpnn.errors import DeviceError, TransportError

_RESOURCE = re.compile(r"^(ASRL[^\s:]+::INSTR|TCPIP\d*::[^\s:]+::\d+::SOCKET)$", re.IGNORECASE)
_IPV6 = re.compile(r"^TCPIP\d*::\[[0-9a-f:.]+\]::\d+::SOCKET$", re.IGNORECASE)
I8, I16 = np.dtype("i1"), np.dtype("<i2")


def _voltages(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.multiply(x, scale[:, None], dtype=np.float32)


def _pair(value: tuple[float, float]) -> str:
    lo, hi = value
    return f"{fmt_float(lo)},{scpi.fmt_float(hi)}"


class CrossbarBoard(MappedCrossbar):
    """A real crossbar board. `resource` is a PyVISA resource string
    (ASRL/dev/ttyUSB0::INSTR or TCPIP::host::port::SOCKET); options set at connect."""

    simulated = False

    class Options(MappingOptions):
        timeout_ms: int = Field(5000, gt=0, description="I/O timeout (ms)")
        visa_library: str | None = Field(None, description='VISA backend: "@py" (pyvisa-py), '
                                         '"@sim" or "board.yaml@sim" (pyvisa-sim), or the path of '
                                         "a vendor's libvisa; unset: $PYVISA_LIBRARY, else @py")
        baud_rate: int = Field(115200, gt=0, description="serial baud rate (ASRL only)")
        max_block_bytes: int = Field(16 << 20, ge=1024, description="largest MVM input block "
                                     "sent at once; larger batches are split")
        pipeline_block_bytes: int = Field(1 << 20, ge=1024, description="TCP: MVM input "
                                          "blocks of about this size go out in a pipeline")
        exclusive: bool = Field(True, description="hold the board's lock (SYST:LOCK) while "
                                "connected; refuse to connect when another session holds it")
        watchdog_s: float = Field(5.0, ge=0, description="board watchdog (SYST:WATC) while "
                                  "connected and exclusive, kept alive between calls; 0: off")
        g_range: tuple[float, float] | None = Field(None, description="narrow the conductance "
                                                    "range used (S)")
        v_limit: float | None = Field(None, gt=0, description="read voltage limit (V)")
        adc_bits: int | None = Field(None, description="ADC resolution (bits)")
        adc_range: float | None = Field(None, gt=0, description="ADC full-scale current (A)")
        prog_tolerance: float | None = Field(None, gt=0, description="write-verify tolerance")
        prog_iterations: int | None = Field(None, gt=0, description="write-verify pulses per cell")

    output = control("OUTP?", "OUTP {}", "Read drivers enabled (OFF grounds every row).",
                     BOOL, lambda on: "ON" if on else "OFF")
    g_range = control("CONF:GRAN?", "CONF:GRAN {}", "(g_min, g_max) conductance range used, S.",
                      FLOAT_PAIR, _pair)
    v_limit = control("SOUR:VOLT:LIM?", "SOUR:VOLT:LIM {}", "Largest read voltage magnitude, V.")
    adc_bits = control("CONF:ADC:BITS?", "CONF:ADC:BITS {}", "ADC resolution, bits.", INT, str)
    adc_range = control("CONF:ADC:RANG?", "CONF:ADC:RANG {}", "ADC full-scale current, A.")
    prog_tolerance = control("PROG:TOL?", "PROG:TOL {}", "Write-verify relative tolerance.")
    prog_iterations = control("PROG:ITER?", "PROG:ITER {}", "Write-verify pulses per cell.",
                              INT, str)
    size = measurement("ARR:SIZE?", "Physical array (rows, cols).", INT_PAIR)
    dac_bits = measurement("CONF:DAC:BITS?", "DAC resolution of the row drivers, bits.", INT)
    dac_lsb = measurement("CONF:DAC:LSB?", "Volts per DAC code.")
    adc_lsb = measurement("CONF:ADC:LSB?", "Amperes per ADC code.")
    prog_status = measurement("PROG:STAT?", "(cells_ok, cells_failed) of the last programming.",
                              INT_PAIR)
    self_test_code = measurement("*TST?", "Self-test result: 0 healthy, else a fault code.", INT)

    def __init__(self, name: str = "crossbar", resource: str | None = None, **options: Any):
        super().__init__(name, resource, **options)
        self.scpi: scpi.SCPISession | None = None
        self._keep_alive: threading.Event | None = None  # set to stop the keep-alive thread
        self._holding = False  # this session holds the board's lock

    @classmethod
    def check_resource(cls, resource: str | None) -> None:
        """Raise ValueError unless `resource` is an ASRL...::INSTR or TCPIP::host::port::SOCKET."""
        if isinstance(resource, str) and _IPV6.match(resource):
            raise ValueError(f"crossbar resource {resource!r}: pyvisa-py's TCPIP SOCKET "
                             "sessions are IPv4 only; serve the board on an IPv4 address")
        if not isinstance(resource, str) or not _RESOURCE.match(resource):
            raise ValueError(f"crossbar resource {resource!r} is not 'ASRL<port>::INSTR' or "
                             "'TCPIP::<host>::<port>::SOCKET'")

    # ---------------------------------------------------------------- link

    @property
    def connected(self) -> bool:
        return self.scpi is not None

    def _open(self) -> None:
        try:
            resource = scpi.open_resource(self.resource, self.options.timeout_ms,
                                          self.options.baud_rate, self.options.visa_library)
        except Exception as exc:  # pyvisa raises several kinds for an unreachable resource
            raise TransportError(f"cannot open {self.resource}: {exc}", self.name) from None
        self.scpi = scpi.SCPISession(resource, self.name)
        try:   # a TCPIP socket resource connects here, at the first exchange
            if self.resource.upper().startswith("ASRL"):
                self.scpi.resync()  # bytes a previous session left in the port
            self.scpi.write("*CLS", check=False)
            idn = self.identity()
        except TransportError as exc:
            self._close()
            reason = str(exc).removeprefix(f"{self.name}: ")
            raise TransportError(f"{reason} (resource {self.resource})", self.name) from None
        if len(idn.split(",")) != 4:
            raise DeviceError(f"expected '<maker>,<model>,<serial>,<firmware>' in reply to "
                              f"'*IDN?', got {idn[:80]!r}", self.name)
        self._claim()
        if self._watchdog:
            self._keep_alive = threading.Event()
            threading.Thread(target=self._keep_board_alive, args=(self._keep_alive,),
                             name=f"{self.name}-keep-alive", daemon=True).start()

    # ---------------------------------------------------------------- the board held for a run

    @property
    def _watchdog(self) -> bool:
        """Whether this session arms the watchdog: it takes the lock and has a period."""
        return self.options.exclusive and self.options.watchdog_s > 0

    def _claim(self) -> None:
        """Take the board's lock (and arm its watchdog) unless held already."""
        if not self.options.exclusive or self._holding:
            return
        deadline = scpi.time.monotonic() + min(self.options.timeout_ms / 1000, 2.0)
        while self.scpi.query("SYST:LOCK:REQ?", INT) != 1:
            if scpi.time.monotonic() < deadline:  # perhaps our own last session, still closing
                scpi.time.sleep(0.05)
                continue
            raise DeviceError(f"{self.resource} is held by another session (SYST:LOCK:OWN? "
                              "OTHER); close it there, or connect with exclusive: false",
                              self.name)
        self._holding = True
        if self._watchdog:
            self.scpi.write(f"SYST:WATC {fmt_float(self.options.watchdog_s)}")

    def _release(self) -> None:
        """Disarm the watchdog and give the lock back; a dead link drops both on the board."""
        if not self._holding:
            return
        self._holding = False
        try:
            if self._watchdog:
                self.scpi.write("SYST:WATC 0", check=False)
            self.scpi.write("SYST:LOCK:REL", check=False)
            self.scpi.query("*OPC?")  # released before we go on
        except Exception as exc:  # noqa: BLE001 - a safe state never raises
            scpi.log.debug("%s: could not release the board: %s", self.name, exc)

    def _require(self) -> None:
        super()._require()
        self._claim()

    def _settings_changed(self) -> None:
        """Before a setting is written (controls call this): the board is claimed too."""
        super()._settings_changed()
        if self.connected:
            self._claim()

    def safe_state(self) -> None:
        """Output off, then the board released (the lock and watchdog are a run's, and every
        way a run ends passes here). The next call takes them again."""
        with self._lock:
            super().safe_state()
            if self.connected:
                self._release()

    def _keep_board_alive(self, stop: threading.Event) -> None:
        """While connected: SYST:WATC:RES whenever the board is held and the link has been
        quiet for a quarter of the watchdog (a call under way is traffic itself)."""
        period = self.options.watchdog_s / 4
        while not stop.wait(period / 2):
            if not self._lock.acquire(blocking=False):
                continue
            try:
                session = self.scpi
                if (self._holding and session is not None
                        and scpi.time.monotonic() - session.last_io >= period):
                    session.write("SYST:WATC:RES", check=False)
            except DeviceError as exc:  # the next call reports a lost link
                scpi.log.debug("%s: keep-alive failed: %s", self.name, exc)
            finally:
                self._lock.release()

    def _close(self) -> None:
        if self._keep_alive is not None:
            self._keep_alive.set()
            self._keep_alive = None
        self._release()
        session, self.scpi = self.scpi, None
        if session is None:
            return
        try:
            session.close()
        except Exception as exc:  # closing a dead link must not raise
            scpi.log.debug("%s: close failed: %s", self.name, exc)

    def identity(self) -> str:
        with self._lock:
            super()._require()  # connected; a read needs no claim on the board
            return self.scpi.query("*IDN?").strip()

    # ---------------------------------------------------------------- primitives

    def _read_config(self) -> BoardConfig:
        return BoardConfig(*self.size, *self.g_range, self.v_limit, self.adc_bits,
                           self.adc_range, self.prog_tolerance, self.prog_iterations,
                           self.dac_bits, self.dac_lsb, self.adc_lsb)

    def _apply_settings(self) -> None:
        for name in ("g_range", "v_limit", "adc_bits", "adc_range", "prog_tolerance",
                     "prog_iterations"):
            value = getattr(self.options, name)
            if value is not None:
                setattr(self, name, value)

    def _set_output(self, on: bool) -> None:
        self.scpi.write(f"OUTP {'ON' if on else 'OFF'}")

    def _reset_board(self) -> None:
        self.scpi.write("*RST")

    def _self_test(self) -> tuple[int, np.ndarray]:
        return self.self_test_code, self.scpi.query_block("DIAG:ADC?", self._board_config().cols)

    def _max_vectors(self, rows: int, codes: bool) -> int:
        size = self.options.max_block_bytes
        if self.scpi is not None and self.scpi._sock is not None:
            size = min(size, self.options.pipeline_block_bytes)
        return max(1, size // ((1 if codes else 4) * rows))

    def _mvm_batches(self, r0: int, c0: int, cols: int, batches: list[tuple], codes: bool
                     ) -> list[np.ndarray]:
        cfg = self._board_config() if codes else None
        requests = []
        for x, scale, _ in batches:
            n, rows = x.shape
            # made by the sender as each block is due: on TCP it overlaps the last one's transfer
            if codes:
                requests.append((f"MEAS:MVM:CODE? {n},{r0},{rows},{c0},{cols},",
                                 partial(dac_codes, x, scale, cfg), n * cols))
            else:
                requests.append((f"MEAS:MVM? {n},{r0},{rows},{c0},{cols},",
                                 partial(_voltages, x, scale), n * cols))
        replies = self.scpi.query_blocks(requests, I16 if codes else FLOAT32)
        return [self._currents(reply, len(x), cols, codes, cfg)
                for reply, (x, _, _) in zip(replies, batches)]

    @staticmethod
    def _currents(reply: np.ndarray, n: int, cols: int, codes: bool, cfg: BoardConfig | None
                  ) -> np.ndarray:
        if codes:
            return (reply * np.float32(cfg.adc_lsb)).reshape(n, cols)
        reply = reply.reshape(n, cols)
        return reply if reply.flags.writeable else reply.copy()

    def _mvm(self, r0: int, c0: int, cols: int, x: np.ndarray, scale: np.ndarray,
             peak: np.ndarray | None = None, codes: bool = False) -> np.ndarray:
        return self._mvm_batches(r0, c0, cols, [(x, scale, peak)], codes)[0]

    def program_conductances(self, r0: int, c0: int, g: np.ndarray) -> tuple[int, int]:
        g = self._matrix(g, "conductances")
        with self._lock:
            self._require()
            rows, cols = g.shape
            self._guarded(self.scpi.write_block, f"PROG:COND {r0},{c0},{rows},{cols},", g)
            return self._guarded(lambda: self.prog_status)

    def read_conductances(self, r0: int, c0: int, rows: int, cols: int) -> np.ndarray:
        with self._lock:
            self._require()
            g = self._guarded(self.scpi.query_block,
                              f"MEAS:COND? {r0},{c0},{rows},{cols}", rows * cols)
            return g.reshape(rows, cols)
