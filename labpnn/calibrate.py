"""Calibrate the crossbar twin from a characterisation (`labpnn calibrate board.h5 --out
twin.yaml`): the `sim-crossbar` options under which the twin reproduces the board's measured
statistics, written as a bench file.

- read noise (`read_noise_rel`, `read_noise_abs`, `d2d`), drift (`drift_nu`, `drift_t0`), stuck
  cells (`stuck_fraction`), the ADC's clipping level (`adc_range`) and IR drop (`r_wire`, from
  the MVM gain) come from the statistics directly (labpnn.board_stats);
- programming (`prog_noise`, `prog_tolerance`) is fitted by simulation: reference twins with the
  fitted read noise are put through the same single-pulse and write-verify steps; prog_noise
  matches the single-pulse RMS error, prog_tolerance the fraction of single pulses that passed
  the verify (PROG:STAT?), and the write-verify RMS error of the result is reported beside the
  board's;
- the array size, conductance range, voltage limit, ADC bits and write-verify pulses are the
  board's settings as it reported them.

Each fitted value comes with a note saying how well the measurement determines it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from labpnn import board_stats
from labpnn.bench import driver_class
from labpnn.board_stats import BoardData
from labpnn.characterise import Characterisation, CharacteriseSettings

SIM_SCALE = 4            # reference twins programme this many times the board's noise rows
FITTED = ("read_noise_rel", "read_noise_abs", "d2d", "prog_noise", "prog_tolerance", "drift_nu", "drift_t0",
          "stuck_fraction", "adc_range", "r_wire")


@dataclass
class Calibration:
    """The twin's options (bench `options:` of a sim-crossbar) and a note per fitted one."""

    options: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def bench(self, name: str = "crossbar") -> dict[str, Any]:
        return {"instruments": {name: {"driver": "sim-crossbar", "options": self.options}}}

    def write(self, path: str | Path, name: str = "crossbar") -> Path:
        path = Path(path)
        head = [f"# A crossbar twin calibrated by `labpnn calibrate {self.source}` "
                f"({time.strftime('%Y-%m-%d %H:%M')}); docs/characterise.md."]
        head += [f"#   {k}: {v}" for k, v in self.notes.items()]
        body = yaml.safe_dump(self.bench(name), sort_keys=False, default_flow_style=False)
        path.write_text("\n".join(head) + "\n" + body)
        return path

    def table(self) -> str:
        width = max(map(len, FITTED))
        rows = [f"{k:<{width}}  {_fmt(k, self.options.get(k))}   {self.notes.get(k, '')}"
                for k in FITTED if k in self.options]
        return "\n".join(rows + [f"{k}: {v}" for k, v in self.notes.items() if k not in FITTED])


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    unit = {"read_noise_abs": (1e6, "uS"), "adc_range": (1e6, "uA"), "drift_t0": (1, "s"),
            "r_wire": (1, "ohm")}.get(key)
    return f"{value * unit[0]:.4g} {unit[1]}" if unit else f"{value:.4g}"


def calibrate(data: BoardData, seed: int = 0) -> Calibration:
    """Fit the twin's options to a characterisation (see the module docstring)."""
    b = data.board
    rn, dr, st, lin, adc = (board_stats.read_noise(data), board_stats.drift(data), board_stats.stuck(data),
                            board_stats.linearity(data), board_stats.adc_range(data))
    rows, cols = b["array_shape"]
    opts: dict[str, Any] = {
        "seed": seed, "rows": rows, "cols": cols, "g_min": b["g_range"][0], "g_max": b["g_range"][1],
        "v_limit": b["v_limit"], "v_max": b["v_limit"], "adc_bits": b["adc_bits"],
        "prog_iterations": b["prog_iterations"],
        "read_noise_rel": rn["rel"], "read_noise_abs": rn["abs"], "d2d": rn["d2d"]}
    cal = Calibration(opts, source=data.source)
    n = int(rn["mask"].sum())
    cal.notes.update(read_noise_rel=f"read spread of {n} cells, {data['verify']['reads'].shape[0]} reads each",
                     read_noise_abs="the spread's floor, set by the lowest levels", d2d="cell-to-cell spread "
                     "of the read spread, less the sampling spread")
    _fit_programming(data, cal, rn)
    if dr["t0"] is None:
        opts["drift_nu"] = 0.0
        cal.notes["drift_nu"] = "no drift beyond read noise over the re-read times"
    else:
        opts.update(drift_nu=dr["nu"], drift_t0=dr["t0"])
        cal.notes["drift_nu"] = f"mean G(t)/G0 over {len(dr['times'])} re-reads up to {dr['times'][-1]:.0f} s"
        cal.notes["drift_t0"] = "onset of the power law"
    opts["stuck_fraction"] = st["fraction"]
    cal.notes["stuck_fraction"] = f"{st['high']} cells stuck at g_max, {st['low']} at g_min of {st['cells']}"
    if adc["range"] is not None:
        opts["adc_range"] = adc["range"]
        cal.notes["adc_range"] = f"clipping level of {adc['columns']} healthy columns"
    else:
        opts["adc_range"] = b["adc_range"]
        cal.notes["adc_range"] = (f"the board's setting: the sweep did not clip (up to {adc['reachable'] * 1e6:.1f} "
                                  "uA expected)")
    opts["adc_range_max"] = max(opts["adc_range"], 10e-3)
    _fit_ir_drop(data, cal, lin)
    if lin["faulty"]:
        cal.notes["faulty ADC columns"] = (f"{sorted(lin['faulty'])} measured faulty: not part of the twin's "
                                           "options (inject them with a fault recipe)")
    return cal


def _fit_ir_drop(data: BoardData, cal: Calibration, lin: dict) -> None:
    """r_wire from I = I_ideal / (1 + R sum G): per healthy column, R = (1/gain - 1) / sum G."""
    d = data["linearity"]
    healthy = np.setdiff1d(np.arange(lin["gain"].size), list(lin["faulty"]))
    column = np.abs(d["expected"][-1, healthy] / d["voltages"][-1])  # sum G per column, S
    r = (1 / lin["gain"][healthy] - 1) / column
    spread = np.std(r) / np.sqrt(r.size)
    if np.median(r) > 3 * spread:
        cal.options["r_wire"] = float(np.median(r))
        cal.notes["r_wire"] = f"MVM gain {lin['median_gain']:.4f} against the read-back conductances"
    else:
        cal.options["r_wire"] = 0.0
        cal.notes["r_wire"] = f"MVM gain {lin['median_gain']:.4f}: no IR drop beyond the noise"


def _reference(cal: Calibration, data: BoardData, **changes: Any) -> BoardData:
    """The programming steps measured on a reference twin with the current options and `changes`."""
    s = data.settings
    rows = SIM_SCALE * int(s["noise_rows"])
    opts = {k: v for k, v in cal.options.items() if k not in ("stuck_fraction", "drift_nu", "drift_t0", "r_wire")}
    opts.update(rows=rows, **changes)
    twin = driver_class("sim-crossbar")(name="reference", **opts)
    settings = CharacteriseSettings(**{**s, "noise_rows": rows, "drift_times": []})
    out = BoardData(board=data.board, settings=settings.model_dump(), source="reference twin")
    with twin:
        Characterisation(twin, settings=settings, progress=False).measure(out, ("single_pulse", "verify"))
    return out


def _fit_programming(data: BoardData, cal: Calibration, rn: dict) -> None:
    """prog_noise from the single-pulse RMS error (RMS^2 = a prog_noise^2 + b, the read noise of
    the averaged reads in b); prog_tolerance by bisection on the fraction of single pulses the
    verify passed."""
    opts = cal.options
    one = board_stats.pulsed_rms(data, "single_pulse")
    setting = data.attrs["verify"]["prog_tolerance"]  # the window the board's single pulses were checked in
    sp = {p: board_stats.pulsed_rms(_reference(cal, data, prog_noise=p, prog_tolerance=setting), "single_pulse")
          for p in (1.0, 2.0)}
    a = (sp[2.0] ** 2 - sp[1.0] ** 2) / 3
    noise = float(np.sqrt(max(one ** 2 - (sp[1.0] ** 2 - a), 0) / a))
    opts["prog_noise"] = noise
    cal.notes["prog_noise"] = (f"single-pulse RMS error {one * 1e6:.2f} uS against {sp[1.0] * 1e6:.2f} uS "
                               "of the reference (Wan et al. 2022) at 1")
    # the window: the fraction of first pulses the verify passed grows with it
    target = board_stats.pulsed_yield(data)

    def passed(tol: float) -> float:
        return board_stats.pulsed_yield(_reference(cal, data, prog_noise=noise, prog_tolerance=tol))

    if not 0.02 < target < 0.98:
        opts["prog_tolerance"] = float(setting)
        cal.notes["prog_tolerance"] = (f"the board's setting (PROG:TOL?): {100 * target:.1f} % of first pulses "
                                       "passed verify, too close to 0 or 100 % to place the window")
        return
    lo, hi = np.log(0.002), np.log(1.0)
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if passed(float(np.exp(mid))) < target else (lo, mid)
    tol = float(np.exp((lo + hi) / 2))
    opts["prog_tolerance"] = tol
    wv = board_stats.pulsed_rms(data, "verify")
    twin = board_stats.pulsed_rms(_reference(cal, data, prog_noise=noise, prog_tolerance=tol), "verify")
    cal.notes["prog_tolerance"] = (f"{100 * target:.1f} % of first pulses passed verify (PROG:STAT?; the board's "
                                   f"PROG:TOL? says {setting:g}); write-verify RMS error {wv * 1e6:.2f} uS, the "
                                   f"twin's {twin * 1e6:.2f} uS")
