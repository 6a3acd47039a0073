"""The simulated memristor crossbar board: `CrossbarPhysics`, a seeded physics model, and
`SimCrossbarBoard`, the in-process twin that calls it directly (no SCPI encoding).

The SCPI front of the same model is sim_devices/scpi_server.py. Physics and parameter
sources are described in docs/crossbar.md.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labpnn.instruments.crossbar_mapping import (BoardConfig, MappedCrossbar, MappingOptions, abs_max,
                                                 dac_codes)
from labpnn.instruments.scpi import DataOutOfRange, DeviceSpecificError, SCPIError, SettingsConflict

# Programming error (one write attempt) of ReRAM, sigma in uS as a polynomial in G/g_max,
# fitted for g_max = 40 uS: aihwkit ReRamWan2022NoiseModel, 1 s after programming
# (Wan et al., Nature 608, 504 (2022)).
WAN2022_PROG_COEFF_US = (0.348, 16.030, -43.853, 45.393, -16.815)
WAN2022_G_MAX_US = 40.0
SLACK = 1e-6  # relative: values at a limit after float32 rounding are still accepted
FAULT_KINDS = ("stuck_cells", "broken_adc")


# Standard normal quantiles at the midpoints of 2^16 equal-probability bins: indexed by 16
# random bits they sample N(0, 1) with mean and variance exact to 1e-5 and tails cut at 4.3
# sigma, three times faster than Generator.standard_normal in float32 (read noise is drawn
# for every output of every MVM).
_NORMAL_QUANTILES = np.array([NormalDist().inv_cdf((i + 0.5) / (1 << 16)) for i in range(1 << 16)],
                             np.float32)


def gaussian(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 samples (quantile lookup, see _NORMAL_QUANTILES)."""
    return np.take(_NORMAL_QUANTILES, rng.integers(0, 1 << 16, shape, dtype=np.uint16))


@functools.cache
def settle_blas() -> None:
    """One float32 product of 128 x 1024 by 1024 x 1000, once per process, before any MVM.

    With OpenBLAS (0.3.31, Haswell kernels) on the 2-core AMD EPYC, a new process runs the
    MVM's product (n x 1024 @ 1024 x 128, float32) 2.4x slower than it can for as long as no
    product with many output columns has run in it; this one settles it in most processes
    (18 of 21 tried; a cause we did not find: the same kernel, no page faults). Rows "a fresh
    process" of `python benchmarks/bench_crossbar.py`. It costs 15-30 ms once.
    """
    np.ones((128, 1024), np.float32) @ np.ones((1024, 1000), np.float32)


class PhysicsOptions(BaseModel):
    """Parameters of the simulated board (units: S, V, A, s)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="seed of every random stream of the board")
    rows: int = Field(1024, ge=1, description="physical array rows (word lines)")
    cols: int = Field(128, ge=2, description="physical array columns (bit lines, one ADC each)")
    g_min: float = Field(1e-6, gt=0, description="lowest programmable conductance (S)")
    g_max: float = Field(40e-6, gt=0, description="highest programmable conductance (S)")
    levels: int = Field(64, ge=2, description="programmable conductance levels in [g_min, g_max]")
    v_max: float = Field(0.5, gt=0, description="hardware maximum read voltage (V)")
    v_limit: float = Field(0.2, gt=0, description="default read voltage limit (V)")
    dac_bits: int = Field(8, ge=2, le=8, description="DAC resolution of the row drivers (bits; "
                          "codes travel as int8)")
    adc_bits: int = Field(10, ge=2, le=24, description="default ADC resolution (bits)")
    adc_range: float = Field(200e-6, gt=0, description="default ADC full-scale current (A)")
    adc_range_max: float = Field(10e-3, gt=0, description="largest settable ADC range (A)")
    prog_tolerance: float = Field(0.12, gt=0, le=1, description="default write-verify "
                                  "tolerance, relative to g_max (calibrated: docs/calibration.md)")
    prog_iterations: int = Field(30, ge=1, le=1000, description="default write-verify pulses "
                                 "per cell")
    prog_noise: float = Field(1.0, ge=0, description="scale of the per-pulse programming "
                              "error (1: Wan et al. 2022 ReRAM)")
    read_noise_rel: float = Field(0.15, ge=0, description="shot-to-shot read noise, relative "
                                  "to G (calibrated: docs/calibration.md)")
    read_noise_abs: float = Field(0.2e-6, ge=0, description="shot-to-shot read noise floor (S)")
    d2d: float = Field(0.2, ge=0, description="device-to-device spread: log-normal sigma of "
                       "each cell's noise multiplier")
    drift_nu: float = Field(0.0, ge=0, description="mean drift exponent nu of "
                            "G(t)=G0 (t/t0)^-nu (0: no drift)")
    drift_nu_std: float = Field(0.0, ge=0, description="cell-to-cell spread of nu")
    drift_t0: float = Field(20.0, gt=0, description="drift reference time t0 (s)")
    r_wire: float = Field(0.0, ge=0, description="series resistance of each column line "
                          "(ohm; 0: no IR drop)")
    stuck_fraction: float = Field(0.0, ge=0, le=1, description="cells stuck from power-on, at "
                                  "g_min or g_max alike (a board's stuck-cell yield)")
    serial: str = Field("0001", description="serial number in *IDN?")

    @model_validator(mode="after")
    def _limits(self):
        if not self.g_min < self.g_max:
            raise ValueError(f"g_min {self.g_min} must be below g_max {self.g_max}")
        if self.v_limit > self.v_max:
            raise ValueError(f"v_limit {self.v_limit} exceeds v_max {self.v_max}")
        if self.adc_range > self.adc_range_max:
            raise ValueError(f"adc_range {self.adc_range} exceeds adc_range_max {self.adc_range_max}")
        return self


class CrossbarPhysics:
    """A seeded memristor crossbar: write-verify programming, read noise, ADC, faults.

    Not thread-safe: its owner (the in-process twin or the SCPI server) serialises calls.
    Refusals raise the SCPI-typed errors of labpnn.instruments.scpi and change nothing.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, **options: Any):
        self.options = opts = PhysicsOptions(**options)
        self.clock = clock
        settle_blas()
        setup, self._prog_rng, self._read_rng, self._fault_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(opts.seed).spawn(4))
        shape = (opts.rows, opts.cols)
        self._multiplier = np.exp(opts.d2d * setup.standard_normal(shape))
        self._nu = np.clip(opts.drift_nu + opts.drift_nu_std * setup.standard_normal(shape), 0, None)
        self._levels = np.linspace(opts.g_min, opts.g_max, opts.levels)
        self._stuck = np.zeros(shape, bool)
        self._stuck_value = np.zeros(shape)
        if opts.stuck_fraction:
            self._inject_stuck(fraction=opts.stuck_fraction, seed=int(setup.integers(1 << 31)))
        self._born_stuck = self._stuck.copy()
        self._adc_faults: dict[int, tuple[str, float, bool]] = {}  # col -> (mode, value, reported)
        self.applied_vectors = 0
        self.reset()

    # ---------------------------------------------------------------- settings

    def reset(self) -> None:
        """*RST: output off, all cells to g_min, settings to their defaults (faults stay)."""
        opts = self.options
        self.output = False
        self._g_range = (opts.g_min, opts.g_max)
        self._v_limit = opts.v_limit
        self._adc_bits = opts.adc_bits
        self._adc_range = opts.adc_range
        self._prog_tolerance = opts.prog_tolerance
        self._prog_iterations = opts.prog_iterations
        self._g0 = np.full((opts.rows, opts.cols), opts.g_min)
        self._t_prog = np.full((opts.rows, opts.cols), self.clock())
        self.prog_status = (0, 0)
        self._invalidate()

    def identity(self) -> str:
        return f"LABPNN,XBAR-SIM,{self.options.serial},1.0"

    @property
    def array_shape(self) -> tuple[int, int]:
        return self.options.rows, self.options.cols

    @property
    def g_range(self) -> tuple[float, float]:
        return self._g_range

    @g_range.setter
    def g_range(self, value: tuple[float, float]) -> None:
        lo, hi = (float(v) for v in value)
        hw_lo, hw_hi = self.options.g_min, self.options.g_max
        if not (hw_lo * (1 - SLACK) <= lo and hi <= hw_hi * (1 + SLACK)):
            raise DataOutOfRange(f"conductance range {lo:g}..{hi:g} S outside the hardware "
                                 f"range {hw_lo:g}..{hw_hi:g} S")
        if not lo < hi:
            raise SettingsConflict(f"g_min {lo:g} S must be below g_max {hi:g} S")
        self._g_range = (max(lo, hw_lo), min(hi, hw_hi))

    @property
    def v_limit(self) -> float:
        return self._v_limit

    @v_limit.setter
    def v_limit(self, value: float) -> None:
        if not 0 < value <= self.options.v_max:
            raise DataOutOfRange(f"voltage limit {value:g} V outside 0..{self.options.v_max:g} V")
        self._v_limit = float(value)

    @property
    def adc_bits(self) -> int:
        return self._adc_bits

    @adc_bits.setter
    def adc_bits(self, value: int) -> None:
        if value != int(value) or not 2 <= value <= 24:
            raise DataOutOfRange(f"ADC resolution {value} outside 2..24 bits")
        self._adc_bits = int(value)

    @property
    def adc_range(self) -> float:
        return self._adc_range

    @adc_range.setter
    def adc_range(self, value: float) -> None:
        if not 0 < value <= self.options.adc_range_max:
            raise DataOutOfRange(f"ADC range {value:g} A outside 0..{self.options.adc_range_max:g} A")
        self._adc_range = float(value)

    @property
    def prog_tolerance(self) -> float:
        return self._prog_tolerance

    @prog_tolerance.setter
    def prog_tolerance(self, value: float) -> None:
        if not 0 < value <= 1:
            raise DataOutOfRange(f"write-verify tolerance {value:g} outside 0..1")
        self._prog_tolerance = float(value)

    @property
    def prog_iterations(self) -> int:
        return self._prog_iterations

    @prog_iterations.setter
    def prog_iterations(self, value: int) -> None:
        if value != int(value) or not 1 <= value <= 1000:
            raise DataOutOfRange(f"write-verify iterations {value} outside 1..1000")
        self._prog_iterations = int(value)

    # ---------------------------------------------------------------- conductances

    def _invalidate(self) -> None:
        self._g_eff: np.ndarray | None = None
        self._sigma2: np.ndarray | None = None
        self._col_sigma: dict[tuple[int, int, int, int], np.ndarray] = {}

    def conductance(self) -> np.ndarray:
        """The true conductance of every cell now (drift and stuck cells applied), float32."""
        if self._g_eff is None or self.options.drift_nu or self.options.drift_nu_std:
            g = self._g0
            if self._nu.any():
                age = np.maximum((self.clock() - self._t_prog) / self.options.drift_t0, 1.0)
                g = g * age ** -self._nu
            self._g_eff = np.where(self._stuck, self._stuck_value, g).astype(np.float32)
            self._sigma2 = None
            self._col_sigma = {}
        return self._g_eff

    def _read_sigma(self, g: np.ndarray, multiplier: np.ndarray) -> np.ndarray:
        o = self.options
        return multiplier * np.sqrt((o.read_noise_rel * g) ** 2 + o.read_noise_abs ** 2)

    def _variance(self) -> np.ndarray:
        """Per-cell read-noise variance (S^2), float32."""
        g = self.conductance()
        if self._sigma2 is None:
            self._sigma2 = (self._read_sigma(g, self._multiplier) ** 2).astype(np.float32)
        return self._sigma2

    def _column_sigma(self, r0: int, c0: int, rows: int, cols: int) -> np.ndarray:
        """sqrt of the mean read variance over the rows r0.. of each column c0.. (S), cached
        until the conductances change."""
        key = (r0, c0, rows, cols)
        variance = self._variance()
        if key not in self._col_sigma:
            region = variance[r0:r0 + rows, c0:c0 + cols]
            self._col_sigma[key] = np.sqrt(region.mean(axis=0))
        return self._col_sigma[key]

    def _region(self, r0: int, c0: int, rows: int, cols: int) -> tuple[slice, slice]:
        r, c = self.array_shape
        if min(r0, c0) < 0 or min(rows, cols) < 1 or r0 + rows > r or c0 + cols > c:
            raise DataOutOfRange(f"sub-array rows {r0}..{r0 + rows - 1}, columns "
                                 f"{c0}..{c0 + cols - 1} outside the {r}x{c} array")
        return slice(r0, r0 + rows), slice(c0, c0 + cols)

    def program(self, r0: int, c0: int, targets: np.ndarray) -> tuple[int, int]:
        """Write-verify `targets` (S) into the sub-array at (r0, c0): each cell is pulsed
        until a verify read is within tolerance * g_max of its nearest level, or the
        pulses run out. Returns and records (cells_ok, cells_failed)."""
        targets = np.asarray(targets, dtype=np.float64)
        region = self._region(r0, c0, *targets.shape)
        lo, hi = self._g_range
        t_min, t_max = float(np.min(targets)), float(np.max(targets))
        if not (lo * (1 - SLACK) <= t_min and t_max <= hi * (1 + SLACK)):  # NaN fails too
            raise DataOutOfRange(f"target conductances {t_min:g}..{t_max:g} S outside the "
                                 f"range {lo:g}..{hi:g} S")
        opts = self.options
        idx = np.clip(np.searchsorted(self._levels, targets), 1, opts.levels - 1)
        below, above = self._levels[idx - 1], self._levels[idx]
        q = np.where(targets - below <= above - targets, below, above)
        stuck = self._stuck[region]
        m = self._multiplier[region]
        g = np.where(stuck, self._stuck_value[region], self._g0[region])
        x = q / opts.g_max
        sigma_us = np.polyval(WAN2022_PROG_COEFF_US[::-1], x) * opts.g_max / (WAN2022_G_MAX_US * 1e-6)
        sigma = opts.prog_noise * np.maximum(sigma_us, 0) * 1e-6 * m
        window = self._prog_tolerance * opts.g_max
        read = self._read_rng.standard_normal
        pending = np.abs(g + self._read_sigma(g, m) * read(g.shape) - q) > window
        pulsed = pending & ~stuck
        for _ in range(self._prog_iterations):
            cells = np.flatnonzero(pending & ~stuck)
            if cells.size == 0:
                break
            new = np.maximum(q.flat[cells] + sigma.flat[cells] * self._prog_rng.standard_normal(cells.size), 0)
            g.flat[cells] = new
            noisy = new + self._read_sigma(new, m.flat[cells]) * read(cells.size)
            pending.flat[cells] = np.abs(noisy - q.flat[cells]) > window
        self._g0[region] = np.where(pulsed, g, self._g0[region])
        self._t_prog[region] = np.where(pulsed, self.clock(), self._t_prog[region])
        self._invalidate()
        failed = int(pending.sum())
        self.prog_status = (pending.size - failed, failed)
        return self.prog_status

    def read(self, r0: int, c0: int, rows: int, cols: int) -> np.ndarray:
        """One noisy read of the sub-array's conductances (S), float32."""
        region = self._region(r0, c0, rows, cols)
        g = self.conductance()[region]
        noise = self._read_sigma(g, self._multiplier[region]) * self._read_rng.standard_normal(g.shape)
        return np.maximum(g + noise, 0).astype(np.float32)

    # ---------------------------------------------------------------- compute

    @property
    def dac_bits(self) -> int:
        return self.options.dac_bits

    @property
    def dac_lsb(self) -> float:
        """Volts per DAC code: the largest code is the voltage limit."""
        return self._v_limit / (2 ** (self.options.dac_bits - 1) - 1)

    @property
    def adc_lsb(self) -> float:
        """Amperes per ADC code."""
        return self._adc_range / 2 ** (self._adc_bits - 1)

    def mvm(self, x: np.ndarray, r0: int, c0: int, cols: int, scale: np.ndarray | None = None,
            peak: np.ndarray | None = None) -> np.ndarray:
        """ADC output currents (n, cols) in A for read voltages V = x * scale[:, None]
        (scale defaults to 1) applied to rows r0..r0+rows-1, all other rows grounded.
        `peak`, max |x| per vector, spares the range check a pass when the caller has it.

        Read noise is drawn per output: sigma = |V_k| * sqrt(mean over the driven rows of
        the cells' read variance), i.e. the sum of independent cell fluctuations with a
        column-average variance (exact when the variance is uniform along the column).
        """
        current = self._analog(x, r0, c0, cols, scale, peak)
        self._adc(current, c0)
        current *= np.float32(self.adc_lsb)
        return current

    def mvm_codes(self, codes: np.ndarray, r0: int, c0: int, cols: int,
                  peak: np.ndarray | None = None) -> np.ndarray:
        """As mvm, with the inputs as DAC codes (V = code * dac_lsb; int8, or integer-valued
        float32) and the outputs as ADC codes (I = code * adc_lsb, int16). Codes beyond the
        DAC's range are refused; `peak`, max |code| per vector, spares a pass."""
        if self._adc_bits > 16:
            raise SettingsConflict(f"{self._adc_bits}-bit ADC codes do not fit int16 "
                                   "(CONF:ADC:BITS 16 or fewer)")
        top = 2 ** (self.options.dac_bits - 1) - 1
        x = codes.astype(np.float32, copy=False)
        peak = abs_max(x) if peak is None else peak
        if peak.size and peak.max() > top:
            raise DataOutOfRange(f"DAC code {int(peak.max())} beyond +-{top}")
        current = self._analog(x, r0, c0, cols, np.float32(self.dac_lsb), peak)
        self._adc(current, c0)
        np.rint(current, out=current)
        return np.clip(current, -(1 << 15), (1 << 15) - 1, out=current).astype(np.int16)

    def _analog(self, x: np.ndarray, r0: int, c0: int, cols: int,
                scale: np.ndarray | np.float32 | None, peak: np.ndarray | None) -> np.ndarray:
        """Column currents (n, cols) in A before the ADC, for V = x * scale (per vector or
        one factor); refusals first, and nothing applied when one is raised."""
        if not self.output:
            raise SettingsConflict("MVM with the output off (OUTP ON first)")
        n, rows = x.shape
        region = self._region(r0, c0, rows, cols)
        known = [c for c, (_, _, reported) in self._adc_faults.items()
                 if reported and c0 <= c < c0 + cols]
        if known:
            raise DeviceSpecificError(f"ADC fault on columns {sorted(known)}")
        if peak is None and np.ndim(scale) == 0:  # one factor: no per-vector maxima needed
            v_peak = max(float(x.max()), -float(x.min())) * (1.0 if scale is None else abs(float(scale)))
        else:
            amax = abs_max(x) if peak is None else peak
            v_peak = float((amax if scale is None else amax * np.abs(scale)).max())
        if not v_peak <= self._v_limit * (1 + SLACK):  # NaN fails too
            raise DataOutOfRange(f"read voltage {v_peak:g} V exceeds the limit {self._v_limit:g} V")
        g = self.conductance()[region]
        current = x @ g
        rms = np.sqrt(np.einsum("ij,ij->i", x, x))
        if scale is not None:
            rms *= scale
        noise = gaussian(self._read_rng, (n, cols))
        noise *= self._column_sigma(r0, c0, rows, cols)
        noise *= rms[:, None]
        if scale is not None:
            current *= scale[:, None] if np.ndim(scale) else scale
        current += noise
        if self.options.r_wire:
            current /= (1 + self.options.r_wire * g.sum(axis=0, dtype=np.float64)).astype(np.float32)
        self.applied_vectors += n
        return current

    def _adc(self, current: np.ndarray, c0: int) -> None:
        """ADC in place: currents (A) to codes, 2^bits over +-range (clipping), then faults
        (a constant fault reads its value / lsb, garbage is uniform over the range)."""
        half = 2 ** (self._adc_bits - 1)
        step = np.float32(self.adc_lsb)
        current /= step
        np.rint(current, out=current)
        np.clip(current, -half, half, out=current)
        for col, (mode, value, _) in self._adc_faults.items():
            j = col - c0
            if 0 <= j < current.shape[1]:
                current[:, j] = value / step if mode == "constant" else self._fault_rng.uniform(
                    -half, half, current.shape[0])

    # ---------------------------------------------------------------- health and faults

    def adc_health(self) -> np.ndarray:
        """DIAG:ADC? words: 0 healthy, 1 for a fault the board knows about (float32)."""
        words = np.zeros(self.options.cols, np.float32)
        for col, (_, _, reported) in self._adc_faults.items():
            words[col] = 1.0 if reported else 0.0
        return words

    def self_test_code(self) -> int:
        """*TST?: 0 when healthy, 1 when an ADC reports a fault."""
        return int(self.adc_health().any())

    @property
    def stuck_cells(self) -> np.ndarray:
        """(k, 2) row, column indices of stuck cells."""
        return np.argwhere(self._stuck)

    def inject_fault(self, kind: str, **params: Any) -> None:
        """Switch a fault on (mid-run is fine):

        - "stuck_cells": count=k or fraction=f of cells (chosen at random from the board's
          fault stream, or `seed`), stuck at="g_min" | "g_max" | "either" (default).
        - "broken_adc": columns=[...], mode="constant" (value=0.0 A) or "garbage" (uniform in
          the ADC range); reported=False keeps DIAG:ADC? and *TST? healthy.
        """
        self.check_fault(kind, **params)
        if kind == "stuck_cells":
            self._inject_stuck(**params)
        else:
            self._inject_adc(**params)
        self._invalidate()

    def check_fault(self, kind: str, **params: Any) -> None:
        """ValueError (TypeError for a parameter it does not take) when inject_fault would
        refuse the fault; changes nothing."""
        import inspect

        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; kinds: {', '.join(FAULT_KINDS)}")
        inject = self._inject_stuck if kind == "stuck_cells" else self._inject_adc
        try:
            bound = inspect.signature(inject).bind(**params)
        except TypeError as exc:
            raise TypeError(f"{kind}: {exc} (it takes "
                            f"{', '.join(inspect.signature(inject).parameters)})") from None
        bound.apply_defaults()
        (self._check_stuck if kind == "stuck_cells" else self._check_adc)(**bound.arguments)

    def _check_stuck(self, count: int | None, fraction: float | None, at: str,
                     seed: int | None) -> int:
        """How many cells the stuck_cells fault sticks; ValueError when it is refused."""
        size = self._stuck.size
        if (count is None) == (fraction is None):
            raise ValueError("stuck_cells needs exactly one of count= or fraction=")
        k = int(count) if count is not None else int(round(float(fraction) * size))
        if not 0 <= k <= size:
            raise ValueError(f"stuck_cells: {k} cells is not within 0..{size}")
        if at not in ("g_min", "g_max", "either"):
            raise ValueError(f"stuck_cells: at={at!r} is not 'g_min', 'g_max' or 'either'")
        return k

    def _inject_stuck(self, count: int | None = None, fraction: float | None = None,
                      at: str = "either", seed: int | None = None) -> None:
        k = self._check_stuck(count, fraction, at, seed)
        size = self._stuck.size
        rng = self._fault_rng if seed is None else np.random.default_rng(seed)
        cells = rng.choice(size, k, replace=False)
        high = {"g_min": np.zeros(k, bool), "g_max": np.ones(k, bool),
                "either": rng.random(k) < 0.5}[at]
        self._stuck.flat[cells] = True
        self._stuck_value.flat[cells] = np.where(high, self.options.g_max, self.options.g_min)

    def _check_adc(self, columns: list[int], mode: str, value: float, reported: bool) -> None:
        if mode not in ("constant", "garbage"):
            raise ValueError(f"broken_adc: mode={mode!r} is not 'constant' or 'garbage'")
        if not isinstance(columns, (list, tuple)) or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in columns):
            raise ValueError(f"broken_adc: columns must be a list of column indices, got {columns!r}")
        bad = [c for c in columns if not 0 <= c < self.options.cols]
        if bad:
            raise ValueError(f"broken_adc: columns {bad} outside the array's 0..{self.options.cols - 1}")

    def _inject_adc(self, columns: list[int], mode: str = "constant", value: float = 0.0,
                    reported: bool = False) -> None:
        self._check_adc(columns, mode, value, reported)
        for c in columns:
            self._adc_faults[int(c)] = (mode, float(value), bool(reported))

    def clear_faults(self) -> None:
        """All faults off; stuck cells return to their programmed conductance (those stuck from
        power-on, `stuck_fraction`, stay)."""
        self._stuck[:] = self._born_stuck
        self._adc_faults.clear()
        self._invalidate()


def _setting(name: str, doc: str) -> property:
    """A board setting of the twin, read and written on the physics model under the lock."""

    def fget(self):
        with self._lock:
            return getattr(self.physics, name)

    def fset(self, value):
        def set_value(v):
            setattr(self.physics, name, v)
        set_value.__name__ = f"set {name}"
        with self._lock:
            self._settings_changed()
            self._call(set_value, value)

    return property(fget, fset, doc=doc)


class SimCrossbarBoard(MappedCrossbar):
    """The in-process twin: the CrossbarArray mapping straight on a CrossbarPhysics model.

    `resource` is ignored. `physics` is the model (for fault recipes and tests).
    """

    simulated = True

    class Options(PhysicsOptions, MappingOptions):
        pass

    output = _setting("output", "Read drivers enabled.")
    g_range = _setting("g_range", "(g_min, g_max) conductance range used, S.")
    v_limit = _setting("v_limit", "Largest read voltage magnitude, V.")
    adc_bits = _setting("adc_bits", "ADC resolution, bits.")
    adc_range = _setting("adc_range", "ADC full-scale current, A.")
    prog_tolerance = _setting("prog_tolerance", "Write-verify relative tolerance.")
    prog_iterations = _setting("prog_iterations", "Write-verify pulses per cell, at most.")

    def __init__(self, name: str = "crossbar", resource: str | None = None, **options: Any):
        super().__init__(name, resource, **options)
        physics_fields = PhysicsOptions.model_fields
        self.physics = CrossbarPhysics(**{k: v for k, v in self.options.model_dump().items()
                                          if k in physics_fields})
        self._shape = self.physics.array_shape
        self._open_flag = False

    @property
    def connected(self) -> bool:
        return self._open_flag

    def _open(self) -> None:
        self._open_flag = True

    def _close(self) -> None:
        self._open_flag = False

    def _call(self, fn, *args):
        """Run a physics call, re-raising its SCPI errors with this instrument's name."""
        try:
            return fn(*args)
        except SCPIError as exc:
            raise type(exc)(exc.scpi_message, code=exc.code, instrument=self.name,
                            command=fn.__name__) from None

    def _read_config(self) -> BoardConfig:
        p = self.physics
        return BoardConfig(*p.array_shape, *p.g_range, p.v_limit, p.adc_bits, p.adc_range,
                           p.prog_tolerance, p.prog_iterations, p.dac_bits, p.dac_lsb, p.adc_lsb)

    def _apply_settings(self) -> None:
        """The twin's options are its power-on defaults: nothing to apply."""

    def _set_output(self, on: bool) -> None:
        self.physics.output = on

    def _reset_board(self) -> None:
        self.physics.reset()

    def _self_test(self) -> tuple[int, np.ndarray]:
        return self.physics.self_test_code(), self.physics.adc_health()

    def _mvm(self, r0: int, c0: int, cols: int, x: np.ndarray, scale: np.ndarray,
             peak: np.ndarray | None = None, codes: bool = False) -> np.ndarray:
        if not codes:
            return self._call(self.physics.mvm, x, r0, c0, cols, scale, peak)
        cfg = self._board_config()
        codes = dac_codes(x, scale, cfg, np.float32)  # no int8 round trip in process
        top = np.minimum(np.rint(peak * scale / np.float32(cfg.dac_lsb)), cfg.dac_top)
        adc = self._call(self.physics.mvm_codes, codes, r0, c0, cols, top)
        return adc * np.float32(cfg.adc_lsb)

    def identity(self) -> str:
        return self.physics.identity()

    def program_conductances(self, r0: int, c0: int, g: np.ndarray) -> tuple[int, int]:
        g = self._matrix(g, "conductances")
        with self._lock:
            self._require()
            return self._guarded(self._call, self.physics.program, r0, c0, g)

    def read_conductances(self, r0: int, c0: int, rows: int, cols: int) -> np.ndarray:
        with self._lock:
            self._require()
            return self._guarded(self._call, self.physics.read, r0, c0, rows, cols)

    def inject_fault(self, kind: str, **params: Any) -> None:
        with self._lock:
            self.physics.inject_fault(kind, **params)

    def check_fault(self, kind: str, **params: Any) -> None:
        with self._lock:
            self.physics.check_fault(kind, **params)

    def clear_faults(self) -> None:
        with self._lock:
            self.physics.clear_faults()
