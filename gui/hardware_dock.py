"""Hardware views: the deployed crossbar's conductance map (target and read back, µS), its
read-back error, and the latest camera / OPU frame."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QComboBox, QDockWidget, QHBoxLayout, QLabel

from labpnn.gui.dock_body import set_body
from labpnn.gui.run_data import RunData

US = 1e6  # siemens -> microsiemens


class ConductanceDock(QDockWidget):
    """Target against read-back conductances of one deployed crossbar unit, and their difference."""

    sections = {"deployed"}  # what of RunData it draws

    def __init__(self, parent=None):
        super().__init__("Crossbar conductance", parent)
        self.setObjectName("conductance")
        self.unit = QComboBox()
        self.unit.setToolTip("which deployed crossbar unit to show")
        self.unit.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.unit.currentIndexChanged.connect(lambda _: self._show())
        self.note = QLabel("nothing deployed yet")
        self.note.setWordWrap(True)  # a long note wraps rather than squeeze the unit's name
        head = QHBoxLayout()
        head.addWidget(QLabel("Unit:"))
        head.addWidget(self.unit)
        head.addWidget(self.note, 1)

        self.view = pg.GraphicsLayoutWidget()
        self.maps = {}
        for col, (key, title) in enumerate((("g_target", "target G"), ("g_read", "read back G"))):
            p = self.view.addPlot(row=0, col=col, title=title)
            p.setLabel("bottom", "column (G+ | G−)")
            p.setLabel("left", "row (input)")
            p.invertY(True)
            p.setAspectLocked(False)
            img = pg.ImageItem(axisOrder="row-major")
            p.addItem(img)
            self.maps[key] = (p, img)
        self.colour_bar = pg.ColorBarItem(colorMap="viridis", label="G (µS)", interactive=False, width=15)
        self.colour_bar.setImageItem([img for _, img in self.maps.values()])
        self.view.addItem(self.colour_bar, row=0, col=2)
        # read back − target: programming (write-verify) error and read noise together
        self.noise = self.view.addPlot(row=1, col=0, colspan=3, title="read-back error")
        self.noise.setLabel("bottom", "G read − G target", units="µS")
        self.noise.getAxis("bottom").enableAutoSIPrefix(False)
        self.noise.setLabel("left", "cells")
        self.histogram = self.noise.plot(stepMode="center", fillLevel=0, brush=(31, 119, 180, 120),
                                         pen=pg.mkPen("#1f77b4"))
        self.view.ci.layout.setRowStretchFactor(0, 3)
        self.view.ci.layout.setRowStretchFactor(1, 2)

        set_body(self, head, self.view, stretch=self.view)
        self._deployed: dict[int, dict[str, np.ndarray]] = {}
        self._names: dict[int, str] = {}
        self._axes(False)

    def clear(self) -> None:
        self._deployed = {}
        self.unit.clear()
        for _, img in self.maps.values():
            img.clear()
        self.histogram.setData([], [])
        self._axes(False)
        self.note.setText("nothing deployed yet")

    def _axes(self, shown: bool) -> None:
        """Axes only around something to show (empty plots would show a meaningless 0..1)."""
        for plot in [p for p, _ in self.maps.values()] + [self.noise]:
            for side in ("bottom", "left"):
                plot.showAxis(side, shown)
        self.colour_bar.setVisible(shown)

    def render(self, data: RunData) -> None:
        self._deployed = {u: d for u, d in data.deployed.items() if "g_target" in d and "g_read" in d}
        self._names = {u: data.name(u) for u in self._deployed}
        units = sorted(self._deployed)
        known = [self.unit.itemData(i) for i in range(self.unit.count())]
        if units != known:
            self.unit.blockSignals(True)
            self.unit.clear()
            for u in units:
                self.unit.addItem(self._names[u], u)
            self.unit.setCurrentIndex(len(units) - 1)  # the latest deployed unit
            self.unit.blockSignals(False)
        if data.deployed and not units:
            self.note.setText("the deployed units have no conductance map (not crossbar units)")
        self._show()

    def _show(self) -> None:
        unit = self.unit.currentData()
        if unit is None:
            return
        g = {k: np.asarray(self._deployed[unit][k], dtype=float) * US for k in ("g_target", "g_read")}
        lo, hi = min(a.min() for a in g.values()), max(a.max() for a in g.values())
        self._axes(True)
        for key, (_, img) in self.maps.items():
            img.setImage(g[key], autoLevels=False)
        self.colour_bar.setLevels((lo, hi if hi > lo else lo + 1e-9))
        diff = (g["g_read"] - g["g_target"]).ravel()
        counts, edges = np.histogram(diff, bins=min(60, max(10, diff.size // 20)))
        self.histogram.setData(edges, counts)
        rows, cols = g["g_target"].shape
        self.note.setText(f"{rows} × {cols} cells, G {lo:.1f}–{hi:.1f} µS; read-back error "
                          f"(programming + read noise): mean {diff.mean():+.3f} µS, σ {diff.std():.3f} µS")


class FrameDock(QDockWidget):
    """The latest camera (speckle) frame or OPU output the run reported."""

    sections = {"frame"}

    def __init__(self, parent=None):
        super().__init__("Camera / OPU frame", parent)
        self.setObjectName("frame")
        self.title = QLabel("no frame yet (scattering units report their camera or OPU output here)")
        self.title.setWordWrap(True)
        self.image = pg.ImageView()
        self.image.ui.roiBtn.hide()
        self.image.ui.menuBtn.hide()
        set_body(self, self.title, self.image, stretch=self.image)

    def clear(self) -> None:
        self.image.clear()

    def render(self, data: RunData) -> None:
        if data.frame is None:
            return
        what, frame = data.frame
        self.image.setImage(np.asarray(frame, dtype=float).T, autoRange=self.image.image is None)
        self.title.setText(f"latest frame from {what or 'the instrument'}: {frame.shape[0]} × {frame.shape[1]} "
                           "pixels, intensity (counts)")
