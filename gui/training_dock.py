"""Training: the PIB loss of each unit against its step, and the accuracies so far."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDockWidget, QSplitter

from labpnn.gui.palette import LEGEND, SPLIT_COLOURS, unit_colour
from labpnn.gui.run_data import RunData

SPLITS = ("train", "test")


class TrainingDock(QDockWidget):
    sections = {"training", "accuracy", "episodes"}  # what of RunData it draws (episodes: an RL run)

    def __init__(self, parent=None):
        super().__init__("Training", parent)
        self.setObjectName("training")
        self.loss = pg.PlotWidget()
        self.loss.getAxis("left").enableAutoSIPrefix(False)
        self.rl: bool | None = None
        self._loss_axes(rl=False)
        self.loss.showGrid(x=True, y=True, alpha=0.2)
        self.loss_legend = self.loss.addLegend(offset=(-10, 10), **LEGEND)
        self.curves: dict[tuple[int, int], pg.PlotDataItem] = {}

        self.acc = pg.PlotWidget(title="Accuracy: linear probe per unit, final readout")
        self.acc.setLabel("left", "accuracy", units="%")
        self.acc.getAxis("left").enableAutoSIPrefix(False)
        # room above 100 % for the bars' value labels and, above them, the legend; a little
        # below 0 so that the 0 % tick label is not cut off at the axis' end
        self.acc.setYRange(-3, 130, padding=0)
        self.acc.getAxis("left").setTicks([[(v, str(v)) for v in range(0, 101, 20)]])
        self.acc.setMouseEnabled(x=False, y=False)
        self.acc.showGrid(y=True, alpha=0.2)
        legend = self.acc.addLegend(offset=(-10, 5), colCount=2, **LEGEND)
        self.bars = {s: pg.BarGraphItem(x=[], height=[], width=0.38, brush=SPLIT_COLOURS[s], pen=None)
                     for s in SPLITS}
        for split, bars in self.bars.items():
            self.acc.addItem(bars)
            legend.addItem(bars, split)
        self.labels: list[pg.TextItem] = []

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.loss)
        splitter.addWidget(self.acc)
        self.setWidget(splitter)

    def _loss_axes(self, rl: bool) -> None:
        """The loss plot's title and axes: PIB's (bits per PIB step), or an RL run's PIB + TD."""
        if rl == self.rl:
            return
        self.rl = rl
        if rl:
            self.loss.setTitle("Loss: PIB + λ·TD per unit (pib-td), at the learner's steps")
            self.loss.setLabel("bottom", "learner step")
            self.loss.setLabel("left", "loss", units="")
        else:
            self.loss.setTitle("Loss: PIB β·I(X;Z) − I(Y;Z); two views β·ΣI(X;Z) − I(Z1;Z2)")
            self.loss.setLabel("bottom", "PIB step")
            self.loss.setLabel("left", "loss", units="bits")

    def clear(self) -> None:
        for curve in self.curves.values():
            self.loss.removeItem(curve)
        self.loss_legend.clear()
        self.curves.clear()
        self._bars({})
        self._loss_axes(rl=False)

    def render(self, data: RunData) -> None:
        self._loss_axes(rl=bool(data.episodes))
        for key, traj in sorted(data.trajectories.items()):
            if key not in self.curves:
                unit, revision = key
                pen = pg.mkPen(unit_colour(unit), width=1.5, style=Qt.PenStyle.DashLine if revision else
                               Qt.PenStyle.SolidLine)
                self.curves[key] = self.loss.plot(pen=pen, name=data.name(unit) + (f", rev. {revision}"
                                                                                   if revision else ""))
            self.curves[key].setData(np.asarray(traj.steps), np.asarray(traj.loss), connect="finite")
        self._bars(data.accuracies)

    def _bars(self, accuracies: dict) -> None:
        groups = sorted({(u, what) for u, what, _ in accuracies}, key=lambda g: (g[0] is None, g[0] or 0, g[1]))
        names = [(what if u is None else f"unit{u} {what}") for u, what in groups]  # probe, linear; readout, verify
        self.acc.getAxis("bottom").setTicks([list(enumerate(names))])
        for label in self.labels:
            self.acc.removeItem(label)
        self.labels = []
        for offset, split in zip((-0.2, 0.2), SPLITS):
            xs, hs = [], []
            for i, (u, what) in enumerate(groups):
                value = accuracies.get((u, what, split))
                if value is None:
                    continue
                xs.append(i + offset)
                hs.append(100 * value)
                label = pg.TextItem(f"{100 * value:.0f}", color="k", anchor=(0.5, 1))
                label.setPos(i + offset, 100 * value)
                self.acc.addItem(label)
                self.labels.append(label)
            self.bars[split].setOpts(x=xs, height=hs)
        self.acc.setXRange(-0.6, max(len(groups), 3) - 0.4, padding=0)  # bars keep their width
