"""Characterise a crossbar board through its driver and the spec's commands only
(../shared/specs/crossbar-scpi.md): what `labpnn characterise crossbar` measures.

Steps, in order (each is written to the characterisation file when it completes):

- `stuck`: the whole array programmed to g_max, then to g_min (twice each: PROG:COND, PROG:STAT?), read back
  (MEAS:COND?, `stuck_reads` averaged); cells left within a quarter of the range of the other
  end are the stuck-cell map.
- `single_pulse`: the first `noise_rows` rows, in blocks at `levels` conductance levels,
  programmed from g_min with PROG:ITER 1: the error of one write pulse.
- `verify`: the same levels with the board's own write-verify (PROG:TOL?, PROG:ITER?): the
  programming error left and the yield (PROG:STAT?) per level; then `reads` reads of every cell:
  read noise against conductance.
- `drift`: re-reads of those cells at `drift_times` seconds after programming.
- `linearity`: read-voltage sweeps (MEAS:MVM?) over +-v_limit, kept below half the ADC range:
  each column's current against the current its read-back conductances predict, its gain,
  offset and deviation from a line, and so ADC health per column by measurement (DIAG:ADC? and
  *TST? are recorded beside it).
- `adc_range`: the rows at g_max swept to the voltage limit: where each column's output clips.

The board ends reset (*RST: outputs off, cells at g_min, its settings as the bench gives them),
also when the characterisation is interrupted or the board refuses a command; failing that, in
its safe state (output off).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from labpnn.config_errors import describe
from labpnn.errors import AbortRequested, ConfigError, DeviceError, LabpnnError
from labpnn.protocols import CrossbarArray
from labpnn.provenance import versions

FORMAT = "labpnn-characterisation"
FORMAT_VERSION = 1
STEPS = ("stuck", "single_pulse", "verify", "drift", "linearity", "adc_range")


SETTINGS = ("output", "g_range", "v_limit", "adc_bits", "adc_range", "prog_tolerance", "prog_iterations")


@runtime_checkable
class CrossbarBoardAPI(CrossbarArray, Protocol):
    """The board primitives a characterisation uses, besides the board settings of SETTINGS
    (properties of the driver and the twin, checked on the class: reading one talks to the board)."""

    def program_conductances(self, r0: int, c0: int, g: np.ndarray) -> tuple[int, int]: ...

    def read_conductances(self, r0: int, c0: int, rows: int, cols: int) -> np.ndarray: ...

    def mvm_voltages(self, r0: int, c0: int, cols: int, v: np.ndarray) -> np.ndarray: ...


class CharacteriseSettings(BaseModel):
    """What to measure and how long (units: s)."""

    model_config = ConfigDict(extra="forbid")

    noise_rows: int = Field(64, ge=2, description="rows used for read noise, programming and drift")
    levels: int = Field(8, ge=3, description="conductance levels, equally spaced in [g_min, g_max]")
    reads: int = Field(24, ge=4, description="reads of every cell for read noise")
    stuck_reads: int = Field(5, ge=1, description="reads averaged for the stuck-cell map")
    drift_times: list[float] = Field([10.0, 30.0, 60.0, 120.0], description="re-read times after "
                                     "programming (s); [] skips drift")
    drift_reads: int = Field(4, ge=1, description="reads averaged at each drift time")
    sweep_points: int = Field(21, ge=5, description="read voltages per sweep")


class CharacterisationFile:
    """The characterisation file: one HDF5 group per completed step, flushed as it is written."""

    def __init__(self, path: Path, settings: CharacteriseSettings, board: dict[str, Any]):
        self.path = path
        self.h5 = h5py.File(path, "w")
        self.h5.attrs.update(labpnn_format=FORMAT, format_version=FORMAT_VERSION, complete=False,
                             stopped="")
        meta = {"settings": settings.model_dump(), "board": board,
                "provenance": {"versions": versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "simulated": bool(board.get("simulated"))}}
        for key, value in meta.items():
            self.h5.attrs[key] = json.dumps(value)
        self.h5.flush()

    def step(self, name: str, arrays: dict[str, Any], attrs: dict[str, Any] | None = None) -> None:
        group = self.h5.create_group(name)
        for key, value in arrays.items():
            group.create_dataset(key, data=np.asarray(value))
        for key, value in (attrs or {}).items():
            group.attrs[key] = value
        self.h5.flush()

    def close(self, complete: bool, stopped: str = "") -> None:
        self.h5.attrs["complete"] = complete
        self.h5.attrs["stopped"] = stopped
        self.h5.close()


class Characterisation:
    """One characterisation of `board` into `path`. `clock` and `sleep` are the time the
    drift re-reads wait on (a test passes a virtual clock that the twin shares); `stop`, when
    set from another thread or a signal handler, ends it at the next measurement."""

    def __init__(self, board: CrossbarBoardAPI, path: str | Path | None = None, settings: CharacteriseSettings | None = None,
                 *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 progress: bool = True):
        if not isinstance(board, CrossbarBoardAPI) or not all(hasattr(type(board), n) for n in SETTINGS):
            raise ConfigError(f"characterise needs a crossbar board (driver crossbar or sim-crossbar); "
                              f"{getattr(board, 'name', board)!r} ({type(board).__name__}) does not offer "
                              "program_conductances, read_conductances, mvm_voltages and the board settings")
        self.board, self.path = board, Path(path) if path is not None else None
        self.settings = settings or CharacteriseSettings()
        self.clock, self.sleep = clock, sleep
        self.stop = threading.Event()
        self.progress = progress
        self.current = "setup"
        self._bar: tqdm | None = None
        self._t_prog = np.zeros(1)

    def run(self) -> Path:
        """Measure every step into the file; it is complete when this returns. Raises
        AbortRequested (stopped) or DeviceError (the board refused): the file keeps the
        completed steps, the board is reset or at least safe."""
        board = self._prepare()
        snap = board.snapshot()
        snap["self_test"] = board.self_test().__dict__
        out = CharacterisationFile(self.path, self.settings, snap)
        try:
            self.measure(out)
        except AbortRequested as exc:
            self._finish(out, f"stopped during {self.current}: {exc}")
            raise
        except DeviceError as exc:
            self._finish(out, f"the board failed during {self.current}: {exc}")
            raise DeviceError(f"characterisation stopped at step {self.current!r}: {exc}; the board is in its "
                              f"safe state; {self.path} keeps the steps completed before it") from None
        except BaseException as exc:
            self._finish(out, f"{type(exc).__name__} during {self.current}: {exc}")
            raise
        self._finish(out, "")
        return self.path

    def measure(self, out, steps: tuple[str, ...] = STEPS) -> None:
        """Run `steps` (in order, from a reset board), handing each result to `out.step()`
        (a CharacterisationFile, or a board_stats.BoardData in memory)."""
        s = self.settings
        total = 9 + 2 * s.stuck_reads + 2 * s.levels + 2 * s.reads + (len(s.drift_times) + 1) * s.drift_reads
        self._bar = tqdm(total=total, desc=f"characterising {self.board.name}", unit="cmd",
                         disable=not self.progress, leave=False, dynamic_ncols=True)
        for self.current in steps:
            self._bar.set_description(f"characterising {self.board.name}: {self.current}")
            getattr(self, f"_{self.current}")(out)
        self._bar.close()

    def _prepare(self) -> CrossbarBoardAPI:
        board = self.board
        if not board.connected:
            board.connect()
        board.reset()
        if self.settings.noise_rows > board.array_shape[0]:
            raise ConfigError(f"characterise: noise_rows {self.settings.noise_rows} exceeds the board's "
                              f"{board.array_shape[0]} rows")
        return board

    # ---------------------------------------------------------------- plumbing

    def _finish(self, out: CharacterisationFile, stopped: str) -> None:
        if self._bar is not None:
            self._bar.close()
        try:
            self.board.reset()
        except LabpnnError:
            pass
        finally:
            self.board.safe_state()
            out.close(complete=not stopped, stopped=stopped)

    def _tick(self, n: int = 1) -> None:
        if self.stop.is_set():
            raise AbortRequested("interrupted")
        self._bar.update(n)

    def _program(self, r0: int, g: np.ndarray) -> tuple[int, int]:
        self._tick()
        return self.board.program_conductances(r0, 0, g)

    def _read(self, rows: int, n: int) -> np.ndarray:
        """n reads of rows 0..rows-1, (n, rows, cols) float32."""
        cols = self.board.array_shape[1]
        reads = np.empty((n, rows, cols), np.float32)
        for k in range(n):
            self._tick()
            reads[k] = self.board.read_conductances(0, 0, rows, cols)
        return reads

    def _targets(self) -> np.ndarray:
        g_min, g_max = self.board.g_range
        return np.linspace(g_min, g_max, self.settings.levels)

    def _level_rows(self) -> list[slice]:
        edges = np.linspace(0, self.settings.noise_rows, self.settings.levels + 1).astype(int)
        return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]

    def _program_levels(self) -> tuple[np.ndarray, np.ndarray]:
        """Program each row block to its level; (status (levels, 2), time programmed (levels,))."""
        cols = self.board.array_shape[1]
        status, times = [], []
        for rows, target in zip(self._level_rows(), self._targets()):
            g = np.full((rows.stop - rows.start, cols), target, np.float32)
            status.append(self._program(rows.start, g))
            times.append(self.clock())
        return np.array(status), np.array(times)

    def _fill(self, rows: int, value: float) -> tuple[int, int]:
        return self._program(0, np.full((rows, self.board.array_shape[1]), value, np.float32))

    # ---------------------------------------------------------------- steps

    def _stuck(self, out: CharacterisationFile) -> None:
        rows = self.board.array_shape[0]
        g_min, g_max = self.board.g_range
        # each end programmed twice: a cell a noisy verify read passed by chance follows the second time
        status_high = [self._fill(rows, g_max) for _ in range(2)][-1]
        high = self._read(rows, self.settings.stuck_reads).mean(axis=0)
        status_low = [self._fill(rows, g_min) for _ in range(2)][-1]
        low = self._read(rows, self.settings.stuck_reads).mean(axis=0)
        # stuck: within a quarter of the range of the other end (read noise alone stays far from it)
        quarter = (g_max - g_min) / 4
        stuck = np.where(high < g_min + quarter, -1, 0) + np.where(low > g_max - quarter, 1, 0)
        out.step("stuck", {"after_g_max": high, "after_g_min": low, "map": stuck.astype(np.int8),
                           "status": np.array([status_high, status_low])},
                 {"g_min": g_min, "g_max": g_max})

    def _single_pulse(self, out: CharacterisationFile) -> None:
        board = self.board
        iterations = board.prog_iterations
        board.prog_iterations = 1
        try:
            status, _ = self._program_levels()
        finally:
            board.prog_iterations = iterations
        reads = self._read(self.settings.noise_rows, self.settings.reads)
        out.step("single_pulse", {"targets": self._targets(), "status": status, "mean": reads.mean(axis=0)},
                 {"prog_iterations": 1})
        self._fill(self.settings.noise_rows, board.g_range[0])

    def _verify(self, out: CharacterisationFile) -> None:
        status, times = self._program_levels()
        self._t_prog = times
        reads = self._read(self.settings.noise_rows, self.settings.reads)
        out.step("verify", {"targets": self._targets(), "status": status, "reads": reads,
                            "read_time": np.array(self.clock() - times.mean())},
                 {"prog_tolerance": self.board.prog_tolerance, "prog_iterations": self.board.prog_iterations})

    def _drift(self, out: CharacterisationFile) -> None:
        s = self.settings
        times, means = [], []
        start = self._t_prog.mean()
        for t in sorted(s.drift_times):
            while (wait := start + t - self.clock()) > 0:
                if self.stop.is_set():
                    raise AbortRequested("interrupted")
                self.sleep(min(wait, 0.5))
            times.append(self.clock() - start)
            means.append(self._read(s.noise_rows, s.drift_reads).mean(axis=0))
        cols = self.board.array_shape[1]
        out.step("drift", {"times": np.array(times, float),
                           "means": np.array(means, np.float32).reshape(len(times), s.noise_rows, cols)})

    def _sweep(self, rows: int, amplitude: np.ndarray) -> np.ndarray:
        """Currents (points, cols) for every one of `rows` rows at each voltage of `amplitude`."""
        board = self.board
        v = np.repeat(amplitude[:, None], rows, axis=1).astype(np.float32)
        self._tick()
        board.output = True
        try:
            return board.mvm_voltages(0, 0, board.array_shape[1], v)
        finally:
            board.output = False

    def _linearity(self, out: CharacterisationFile) -> None:
        board = self.board
        g = self._read(self.settings.noise_rows, self.settings.drift_reads).mean(axis=0).astype(np.float64)
        column = g.sum(axis=0)  # siemens: current per volt on every driven row
        v_max = min(board.v_limit, 0.5 * board.adc_range / float(column.max()))
        volts = np.linspace(-v_max, v_max, self.settings.sweep_points)
        current = self._sweep(self.settings.noise_rows, volts)
        out.step("linearity", {"voltages": volts, "currents": current, "expected": volts[:, None] * column},
                 {"adc_range": board.adc_range, "adc_bits": board.adc_bits, "v_limit": board.v_limit})

    def _adc_range(self, out: CharacterisationFile) -> None:
        board = self.board
        rows = self.settings.noise_rows
        self._fill(rows, board.g_range[1])
        g = self._read(rows, 1)[0].astype(np.float64)
        volts = np.linspace(-board.v_limit, board.v_limit, self.settings.sweep_points)
        current = self._sweep(rows, volts)
        out.step("adc_range", {"voltages": volts, "currents": current, "expected": volts[:, None] * g.sum(axis=0)},
                 {"adc_range": board.adc_range})


def characterise_bench(args, started: Callable[[Characterisation], None]) -> int:
    """`labpnn characterise crossbar`: the bench's board characterised into args.out, the
    report written, the summary printed. `started(job)` lets the caller stop it (signals)."""
    from labpnn import board_stats
    from labpnn.bench import Bench
    from labpnn.board_report import write_report

    given = {"noise_rows": args.noise_rows, "levels": args.levels, "reads": args.reads}
    if args.drift_times is not None:
        try:
            given["drift_times"] = [float(t) for t in args.drift_times.split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"--drift-times {args.drift_times!r} is not a comma-separated list of seconds") from None
    try:
        settings = CharacteriseSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"characterise: {describe(exc, 'option')}") from None
    bench = Bench.load(args.config)
    job = Characterisation(bench[args.instrument], args.out, settings, progress=not args.quiet)
    started(job)
    try:
        job.run()
    except AbortRequested:
        print(f"labpnn: characterisation interrupted; the board is reset and safe; {args.out} keeps the "
              "completed steps", file=sys.stderr)
        return 130
    finally:
        bench.close()
    data = board_stats.load(args.out)
    report = write_report(data, args.report or Path(args.out).with_suffix(""))
    print(board_stats.format_table(board_stats.summary(data)))
    print(f"labpnn: characterisation {args.out}, report {report}", file=sys.stderr)
    return 0
