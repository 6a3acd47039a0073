"""A crossbar characterisation (labpnn.characterise), read back and reduced to statistics:
the stuck-cell map, read noise against conductance, programming error and yield, drift,
MVM linearity and ADC health per column, the ADC's clipping level. Used by the report, the
calibration and the GUI's characterisation view.

Read noise is fitted in the twin's terms (docs/characterise.md): a cell's read spread is
sigma = m * sqrt((rel * G)^2 + abs^2), with m log-normal(0, d2d) per cell. From `reads` reads
of each cell, log s_i = log m_i + log sigma(G_i) + log(chi_k / sqrt k) (k = reads - 1): rel and
abs by least squares on log s_i, d2d from the residual variance less the chi term's
(trigamma(k/2) / 4).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import optimize, special

from labpnn.characterise import FORMAT, STEPS
from labpnn.errors import DataError

REQUIRED = {"stuck": ("after_g_max", "after_g_min", "map", "status"),
            "single_pulse": ("targets", "status", "mean"),
            "verify": ("targets", "status", "reads", "read_time"),
            "drift": ("times", "means"),
            "linearity": ("voltages", "currents", "expected"),
            "adc_range": ("voltages", "currents", "expected")}
GAIN_TOLERANCE = 0.1   # a column whose gain departs this much from the median is faulty
NOISE_FACTOR = 4.0     # ... or whose residual RMS is this many times the median column's


@dataclass
class BoardData:
    """A characterisation's steps in memory: `steps[name][dataset]`, `attrs[name]`, the board
    snapshot and the settings it was taken with."""

    steps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    board: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "memory"

    def step(self, name: str, arrays: dict[str, Any], attrs: dict[str, Any] | None = None) -> None:
        """The recorder interface of labpnn.characterise (as CharacterisationFile.step)."""
        self.steps[name] = {k: np.asarray(v) for k, v in arrays.items()}
        self.attrs[name] = dict(attrs or {})

    def __getitem__(self, name: str) -> dict[str, np.ndarray]:
        try:
            return self.steps[name]
        except KeyError:
            raise DataError(f"{self.source}: the characterisation has no '{name}' measurement") from None

    def noise_mask(self) -> np.ndarray:
        """Cells of the noise rows that are not stuck (all when there is no stuck map)."""
        rows = self["verify"]["reads"].shape[1:]
        if "stuck" not in self.steps:
            return np.ones(rows, bool)
        return self["stuck"]["map"][:rows[0]] == 0

    def level_rows(self) -> list[slice]:
        levels, rows = len(self["verify"]["targets"]), self["verify"]["reads"].shape[1]
        edges = np.linspace(0, rows, levels + 1).astype(int)
        return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def is_characterisation(path: str | Path) -> bool:
    """Whether `path` is a characterisation file (not a run file)."""
    try:
        with h5py.File(path, "r") as h5:
            return h5.attrs.get("labpnn_format") == FORMAT
    except OSError:
        return False


def load(path: str | Path, require: tuple[str, ...] = STEPS) -> BoardData:
    """Read a characterisation file; a missing or incomplete measurement is a DataError naming it."""
    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except FileNotFoundError:
        raise DataError(f"{path}: no such characterisation file") from None
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    with h5:
        if h5.attrs.get("labpnn_format") != FORMAT:
            raise DataError(f"{path}: not a crossbar characterisation (attribute labpnn_format is "
                            f"{h5.attrs.get('labpnn_format')!r}, expected {FORMAT!r})")
        data = BoardData(board=json.loads(h5.attrs["board"]), settings=json.loads(h5.attrs["settings"]),
                         source=str(path))
        for name in STEPS:
            if name in h5:
                data.step(name, {k: h5[name][k][()] for k in h5[name]}, dict(h5[name].attrs))
        stopped = str(h5.attrs.get("stopped", ""))
    missing = [f"'{n}'" for n in require if n not in data.steps]
    if missing:
        why = f" (the characterisation {stopped})" if stopped else ""
        raise DataError(f"{path}: measurement {', '.join(missing)} missing{why}; run labpnn characterise "
                        "crossbar again")
    for name in require:
        absent = [k for k in REQUIRED[name] if k not in data.steps[name]]
        if absent:
            raise DataError(f"{path}: measurement '{name}' lacks dataset(s) {', '.join(absent)}")
    return data


# ---------------------------------------------------------------- statistics


def stuck(data: BoardData) -> dict[str, Any]:
    m = data["stuck"]["map"]
    return {"map": m, "fraction": float(np.mean(m != 0)), "high": int(np.sum(m > 0)), "low": int(np.sum(m < 0)),
            "cells": int(m.size)}


def read_noise(data: BoardData) -> dict[str, Any]:
    """rel, abs (S) and d2d fitted to the read spread of every (non-stuck) cell; `levels`:
    per level, the median conductance and the geometric-mean read spread (S) for plotting."""
    reads = data["verify"]["reads"].astype(np.float64)
    mask = data.noise_mask()
    g, s = reads.mean(axis=0), reads.std(axis=0, ddof=1)
    # reads are clipped at 0 S: cells within a few spreads of it are left out (by their mean,
    # which for normal reads is independent of their spread, so the choice does not bias it)
    floor = 4 * float(np.median(s[data.level_rows()[0]][mask[data.level_rows()[0]]]))
    keep = mask & (s > 0) & (g > floor)
    k = reads.shape[0] - 1
    bias = 0.5 * (special.digamma(k / 2) - np.log(k / 2))  # E[log(s / sigma)]
    y, gk = np.log(s[keep]) - bias, g[keep]

    def residual(p):
        return y - 0.5 * np.log(np.exp(2 * p[0]) * gk ** 2 + np.exp(2 * p[1]))

    start = np.log([max(np.median(s[keep] / gk), 1e-4), max(np.min(s[keep]), 1e-12)])
    fit = optimize.least_squares(residual, start)
    rel, abs_ = np.exp(fit.x)
    d2d = float(np.sqrt(max(np.var(fit.fun) - special.polygamma(1, k / 2) / 4, 0.0)))
    levels = [(float(np.median(g[r][mask[r]])), float(np.exp(np.mean(np.log(s[r][keep[r]])) - bias)))
              for r in data.level_rows() if keep[r].any()]
    return {"rel": float(rel), "abs": float(abs_), "d2d": d2d, "g": g, "s": s, "mask": keep,
            "levels": np.array(levels)}


def programming(data: BoardData, step: str = "verify") -> dict[str, Any]:
    """Per level: target (S), mean and RMS error of the programmed conductance (S, the mean of
    the step's reads less the target) and the write-verify yield (cells ok / cells)."""
    d = data[step]
    mean = d["reads"].mean(axis=0) if "reads" in d else d["mean"]
    mask = data.noise_mask()
    rows = []
    for r, target, (ok, failed) in zip(data.level_rows(), d["targets"], d["status"]):
        e = (mean[r] - target)[mask[r]].astype(np.float64)
        rows.append((float(target), float(e.mean()), float(np.sqrt(np.mean(e ** 2))), ok / max(ok + failed, 1)))
    return {"levels": np.array(rows), "errors": (mean - d["targets"][_level_index(data)][:, None])}


def _level_index(data: BoardData) -> np.ndarray:
    index = np.empty(data["verify"]["reads"].shape[1], int)
    for i, r in enumerate(data.level_rows()):
        index[r] = i
    return index


def pulsed_rms(data: BoardData, step: str) -> float:
    """RMS programming error (S) over the levels a pulse from g_min must have moved (a quarter
    of the range and more above g_min); the statistic the calibration matches."""
    levels = programming(data, step)["levels"]
    g_min, g_max = data["verify"]["targets"][[0, -1]]
    far = levels[:, 0] >= g_min + 0.25 * (g_max - g_min)
    return float(np.sqrt(np.mean(levels[far, 2] ** 2)))


def pulsed_yield(data: BoardData) -> float:
    """Fraction of the (non-stuck) cells of those levels whose first write pulse passed the
    board's verify (PROG:STAT? of the single-pulse step): set by the window against the
    pulse and read errors, the statistic the calibration matches the tolerance to."""
    d = data["single_pulse"]
    g_min, g_max = d["targets"][[0, -1]]
    mask = data.noise_mask()
    ok = cells = 0
    for r, target, (n_ok, n_failed) in zip(data.level_rows(), d["targets"], d["status"]):
        if target >= g_min + 0.25 * (g_max - g_min):
            ok, cells = ok + n_ok, cells + int(mask[r].sum())
    return ok / max(cells, 1)


def drift(data: BoardData) -> dict[str, Any]:
    """G(t)/G(0) per level and time, and nu, t0 (s) of G(t) = G0 (t/t0)^-nu fitted to it
    (nu 0 and t0 None when nothing drifted beyond the read noise)."""
    d = data["drift"]
    times, means = d["times"].astype(np.float64), d["means"].astype(np.float64)
    ref = data["verify"]["reads"].mean(axis=0)
    mask = data.noise_mask()
    ratio = np.array([[means[t][r][mask[r]].mean() / ref[r][mask[r]].mean() for r in data.level_rows()]
                      for t in range(len(times))]).reshape(len(times), len(data.level_rows()))
    result: dict[str, Any] = {"times": times, "ratio": ratio, "nu": 0.0, "t0": None}
    if len(times) < 2 or not np.all(times > 0):
        return result
    log_r = np.log(ratio)
    # the read noise of a level mean: the spread of the ratio across levels at the first time
    if np.max(np.abs(log_r)) < 3 * max(float(np.std(log_r[0])), 1e-6):
        return result

    def residual(p):
        nu, log_t0 = p
        return (log_r + nu * np.maximum(np.log(times) - log_t0, 0)[:, None]).ravel()

    slope = -np.polyfit(np.log(times), log_r.mean(axis=1), 1)[0]
    fit = optimize.least_squares(residual, [max(slope, 1e-4), np.log(times[0]) - 0.5],
                                 bounds=([0, -20], [10, np.log(times[-1])]))
    result.update(nu=float(fit.x[0]), t0=float(np.exp(fit.x[1])))
    return result


def linearity(data: BoardData) -> dict[str, Any]:
    """Per column: gain and offset (A) of the measured current against the expected one, the
    residual RMS (A) and the largest deviation from the line (fraction of the swept full scale);
    `faulty` {column: reason} judged against the median column."""
    d = data["linearity"]
    current, expected = d["currents"].astype(np.float64), d["expected"].astype(np.float64)
    cols = current.shape[1]
    gain, offset, rms, worst = (np.zeros(cols) for _ in range(4))
    for j in range(cols):
        a = np.stack([expected[:, j], np.ones(len(expected))], axis=1)
        (gain[j], offset[j]), *_ = np.linalg.lstsq(a, current[:, j], rcond=None)
        resid = current[:, j] - a @ [gain[j], offset[j]]
        rms[j] = np.sqrt(np.mean(resid ** 2))
        worst[j] = np.max(np.abs(resid)) / max(np.max(np.abs(expected[:, j])), 1e-30)
    faulty = {}
    g_med, r_med = np.median(gain), np.median(rms)
    for j in range(cols):
        if np.ptp(current[:, j]) == 0:
            faulty[j] = f"constant output ({current[0, j]:.3g} A)"
        elif rms[j] > NOISE_FACTOR * max(r_med, 1e-15):
            faulty[j] = f"noisy: residual {rms[j] * 1e6:.2f} uA RMS against {r_med * 1e6:.2f} uA typical"
        elif abs(gain[j] / g_med - 1) > GAIN_TOLERANCE:
            faulty[j] = f"gain {gain[j]:.3f} against {g_med:.3f} typical"
    return {"gain": gain, "offset": offset, "rms": rms, "nonlinearity": worst, "faulty": faulty,
            "median_gain": float(g_med), "median_nonlinearity": float(np.median(worst))}


def adc_range(data: BoardData) -> dict[str, Any]:
    """Per column the largest current measured in the full-voltage sweep (A), whether it clipped
    (the expected current went 10 % beyond it), and the board's clipping level: the median over
    the healthy columns that clipped (None when none did)."""
    d = data["adc_range"]
    peak = np.max(np.abs(d["currents"]), axis=0).astype(np.float64)
    clipped = np.max(np.abs(d["expected"]), axis=0) > 1.1 * peak
    healthy = np.ones(peak.size, bool)
    if "linearity" in data.steps:
        healthy[list(linearity(data)["faulty"])] = False
    use = clipped & healthy
    return {"peak": peak, "clipped": clipped, "range": float(np.median(peak[use])) if use.any() else None,
            "columns": int(use.sum()),
            "reachable": float(np.max(np.abs(d["expected"])))}


def summary(data: BoardData) -> list[tuple[str, str]]:
    """The summary table: (quantity, value with unit)."""
    b, st, rn, lin, adc, dr = (data.board, stuck(data), read_noise(data), linearity(data), adc_range(data),
                               drift(data))
    prog = programming(data)["levels"]
    reported = b.get("self_test", {})
    rows = [("board", f"{b.get('identity', b.get('name'))} ({'simulated' if b.get('simulated') else 'hardware'})"),
            ("array", f"{b['array_shape'][0]} x {b['array_shape'][1]} cells"),
            ("conductance range", f"{b['g_range'][0] * 1e6:.2f} .. {b['g_range'][1] * 1e6:.2f} uS"),
            ("stuck cells", f"{st['high'] + st['low']} of {st['cells']} ({100 * st['fraction']:.2f} %): "
                            f"{st['high']} at g_max, {st['low']} at g_min"),
            ("read noise", f"sigma = m * sqrt(({rn['rel']:.4f} G)^2 + ({rn['abs'] * 1e6:.3f} uS)^2), "
                           f"m log-normal sigma {rn['d2d']:.3f}"),
            ("programming error (write-verify)", f"RMS {np.sqrt(np.mean(prog[:, 2] ** 2)) * 1e6:.2f} uS "
                                                 f"(tolerance {data.attrs['verify'].get('prog_tolerance', 0):g}, "
                                                 f"{data.attrs['verify'].get('prog_iterations', 0)} pulses)"),
            ("programming error (one pulse)", f"RMS {pulsed_rms(data, 'single_pulse') * 1e6:.2f} uS "
                                              "(levels >= 1/4 of the range)"),
            ("write-verify yield", f"{100 * prog[:, 3].min():.2f} % (worst level) .. "
                                   f"{100 * prog[:, 3].max():.2f} %"),
            ("drift", "not measured (no re-read times)" if not dr["times"].size else
                      "none beyond read noise" if dr["t0"] is None else
                      f"nu = {dr['nu']:.4f}, t0 = {dr['t0']:.1f} s "
                      f"(G/G0 = {dr['ratio'][-1].mean():.3f} at {dr['times'][-1]:.0f} s)"),
            ("MVM linearity", f"median gain {lin['median_gain']:.4f}, median deviation "
                              f"{100 * lin['median_nonlinearity']:.2f} % of full scale"),
            ("ADC columns faulty (measured)", ", ".join(f"{c}" for c in sorted(lin["faulty"])) or "none"),
            ("ADC health (board-reported)", f"{reported.get('detail', 'not recorded')}"),
            ("ADC clipping", f"{adc['range'] * 1e6:.1f} uA (setting {b.get('adc_range', 0) * 1e6:.1f} uA)"
                             if adc["range"] else f"not reached up to {adc['reachable'] * 1e6:.1f} uA")]
    return rows


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
