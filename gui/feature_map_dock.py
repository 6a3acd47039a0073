"""The feature map: a 2-D embedding (UMAP, else t-SNE; or PCA) of a finished run's measured test
features, one colour per label: what the units learned, with or without labels."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QDockWidget, QHBoxLayout, QLabel, QPushButton

from labpnn import embedding
from labpnn.errors import LabpnnError
from labpnn.gui.dock_body import set_body
from labpnn.gui.palette import LEGEND, UNIT_COLOURS

LABEL_COLOURS = UNIT_COLOURS + ("#7f7f7f", "#bcbd22")  # ten classes, ten hues


class FeatureMapDock(QDockWidget):
    """Set a run file with `set_run(path, units)`; Map computes off the GUI thread."""

    mapped = Signal(object)  # (coords, labels, title) or an error message, from the worker thread

    def __init__(self, parent=None):
        super().__init__("Feature map", parent)
        self.setObjectName("feature_map")
        self.unit = QComboBox()
        self.unit.setToolTip("whose measured test features to map")
        self.method = QComboBox()
        self.method.addItems(embedding.METHODS)
        self.method.setToolTip("auto: UMAP when umap-learn is installed (pip install 'labpnn[umap]'), else t-SNE")
        self.button = QPushButton("Map")
        self.button.setToolTip("embed the unit's test features in 2-D, coloured by label")
        self.button.clicked.connect(self.compute)
        self.note = QLabel("open or finish a run, then Map")
        head = QHBoxLayout()
        for w in (QLabel("Unit:"), self.unit, QLabel("Method:"), self.method, self.button):
            head.addWidget(w)
        head.addWidget(self.note, 1)
        self.plot = pg.PlotWidget()
        self.plot.hideAxis("bottom")
        self.plot.hideAxis("left")
        self.legend = self.plot.addLegend(offset=(-5, 5), **LEGEND)
        set_body(self, head, self.plot, stretch=self.plot)
        self.path: Path | None = None
        self.worker: threading.Thread | None = None
        self.mapped.connect(self._show)
        self.set_run(None, [])

    def set_run(self, path: str | Path | None, units: list[str]) -> None:
        """The run file to map (None: none) and its units' names, last selected."""
        self.path = Path(path) if path is not None else None
        self.unit.clear()
        self.unit.addItems(units)
        self.unit.setCurrentIndex(len(units) - 1)
        self.button.setEnabled(self.path is not None and bool(units))
        self.clear()
        self.note.setText(f"Map: {self.path.name}" if self.path else "open or finish a run, then Map")

    def clear(self) -> None:
        self.plot.clear()
        self.legend.clear()

    def compute(self) -> None:
        if self.path is None or (self.worker is not None and self.worker.is_alive()):
            return
        path, unit, method = self.path, self.unit.currentIndex(), self.method.currentText()
        self.button.setEnabled(False)
        self.note.setText(f"mapping {self.unit.currentText()} ({method})…")

        def work() -> None:
            try:
                self.mapped.emit(embedding.run_map(path, unit, method))
            except (LabpnnError, ValueError) as exc:
                self.mapped.emit(str(exc))

        self.worker = threading.Thread(target=work, name="feature-map", daemon=True)
        self.worker.start()

    def _show(self, result) -> None:
        self.button.setEnabled(self.path is not None)
        if isinstance(result, str):
            self.note.setText(f"cannot map: {result}")
            return
        coords, labels, title = result
        self.clear()
        for c in np.unique(labels):
            pts = coords[labels == c]
            colour = LABEL_COLOURS[int(c) % len(LABEL_COLOURS)]
            self.plot.addItem(pg.ScatterPlotItem(pts[:, 0], pts[:, 1], size=4, pen=None, brush=pg.mkBrush(colour),
                                                 name=str(c)))
        self.plot.setTitle(title)
        self.note.setText(f"{len(labels)} test samples, colour = label")
