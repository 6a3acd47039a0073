"""The information plane: I(X;Z) against I(Y;Z), one trajectory per unit, shaded by step."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QDockWidget

from labpnn.gui.palette import LEGEND, step_brushes, unit_colour
from labpnn.gui.run_data import RunData


class InfoPlaneDock(QDockWidget):
    sections = {"info_plane"}  # what of RunData it draws

    def __init__(self, parent=None):
        super().__init__("Information plane", parent)
        self.setObjectName("info_plane")
        self.plot = pg.PlotWidget()
        self.plot.setTitle("PIB trajectories: pale = first step, dark = last")
        for side, text in (("bottom", "I(X;Z)"), ("left", "I(Y;Z)")):
            self.plot.setLabel(side, text, units="bits")
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.legend = self.plot.addLegend(offset=(-10, -10), **LEGEND)
        self.items: dict[tuple[int, int], tuple[pg.PlotDataItem, pg.ScatterPlotItem]] = {}
        self.setWidget(self.plot)

    def clear(self) -> None:
        for curve, points in self.items.values():
            self.plot.removeItem(curve)
            self.plot.removeItem(points)
        self.legend.clear()
        self.items.clear()

    def render(self, data: RunData) -> None:
        for key, traj in sorted(data.trajectories.items()):
            unit, revision = key
            if not np.isfinite(traj.i_yz).any():  # no labels (unsupervised): not in this plane
                continue
            if key not in self.items:
                colour = unit_colour(unit)
                curve = self.plot.plot(pen=pg.mkPen(colour, width=1.2))
                points = pg.ScatterPlotItem(size=7, pen=pg.mkPen(colour.darker(130), width=0.5),
                                            brush=pg.mkBrush(colour))  # the legend's swatch
                self.plot.addItem(points)
                self.legend.addItem(points, data.name(unit) + (f", revision {revision}" if revision else ""))
                self.items[key] = (curve, points)
            curve, points = self.items[key]
            x, y = np.asarray(traj.i_xz), np.asarray(traj.i_yz)
            steps = np.asarray(traj.steps)
            last = max(data.planned.get(unit, 0) - 1, int(steps.max(initial=0)), 1)
            curve.setData(x, y)
            points.setData(x, y, brush=step_brushes(unit, steps / last))
