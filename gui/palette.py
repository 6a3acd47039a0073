"""Colours shared by the plots: one hue per unit, shaded light (early steps) to dark (late)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor

UNIT_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
SPLIT_COLOURS = {"train": "#90a4ae", "test": "#37474f"}
SHADES = 32
LEGEND = {"brush": (255, 255, 255, 215), "pen": (180, 180, 180)}  # legends stay readable over data

pg.setConfigOptions(background="w", foreground="k", antialias=True)  # every plot of the GUI


def unit_colour(unit: int | None) -> QColor:
    return QColor("#455a64") if unit is None else QColor(UNIT_COLOURS[unit % len(UNIT_COLOURS)])


def _mix(a: QColor, b: QColor, t: float) -> QColor:
    return QColor.fromRgbF(*(x + (y - x) * t for x, y in zip(a.getRgbF()[:3], b.getRgbF()[:3])))


_shades: dict[int, list] = {}


def step_brushes(unit: int, fraction: np.ndarray) -> list:
    """A brush per point, from a pale tint of the unit's colour (fraction 0: the first step)
    to a dark shade (fraction 1: the last planned step)."""
    if unit not in _shades:
        base = unit_colour(unit)
        light, dark = _mix(base, QColor("white"), 0.75), _mix(base, QColor("black"), 0.45)
        _shades[unit] = [pg.mkBrush(_mix(light, dark, i / (SHADES - 1))) for i in range(SHADES)]
    index = np.clip(np.round(np.asarray(fraction) * (SHADES - 1)), 0, SHADES - 1).astype(int)
    return [_shades[unit][i] for i in index]
