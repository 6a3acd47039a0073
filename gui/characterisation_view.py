"""The characterisation view: a crossbar characterisation file (labpnn characterise crossbar)
as a conductance map with its stuck cells, read noise against conductance, drift curves and
the summary table.

    python -m labpnn.gui.characterisation_view board.h5 [--screenshot out.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (QApplication, QHeaderView, QLabel, QMainWindow, QSplitter, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)
from PySide6.QtCore import Qt

from labpnn import board_stats
from labpnn.board_stats import BoardData
from labpnn.errors import LabpnnError
from labpnn.gui.palette import LEGEND, UNIT_COLOURS

US = 1e6  # siemens -> microsiemens
MAX_POINTS = 5000  # cells drawn in the read-noise scatter


class CharacterisationView(QMainWindow):
    """One characterisation file; `open(path)` reads it (the stuck map and the read noise must
    be there; drift and the table are shown when measured)."""

    def __init__(self, data: BoardData, parent=None):
        super().__init__(parent)
        self.data = data
        self.setWindowTitle(f"labpnn characterisation: {data.source}")
        self.plots = pg.GraphicsLayoutWidget()
        self.map_plot = self.plots.addPlot(row=0, col=0, title="conductance read back after programming g_max")
        self.map_plot.setLabel("bottom", "column")
        self.map_plot.setLabel("left", "row")
        self.map_plot.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.map_plot.addItem(self.image)
        self.stuck = pg.ScatterPlotItem(symbol="s", size=3, pen=None, brush="#d62728")
        self.map_plot.addItem(self.stuck)
        self.colour_bar = pg.ColorBarItem(colorMap="viridis", label="G (µS)", interactive=False, width=15)
        self.colour_bar.setImageItem(self.image)
        self.plots.addItem(self.colour_bar, row=0, col=1)
        self.noise_plot = self.plots.addPlot(row=0, col=2, title="read noise against conductance")
        self.noise_plot.setLabel("bottom", "G (µS)")
        self.noise_plot.setLabel("left", "read spread (µS)")
        self.noise_plot.addLegend(offset=(10, 10), **LEGEND)
        self.drift_plot = self.plots.addPlot(row=0, col=3, title="drift")
        self.drift_plot.setLogMode(x=True, y=False)
        self.drift_plot.setLabel("bottom", "time after programming (s)")
        self.drift_plot.setLabel("left", "G(t) / G(0)")
        self.drift_plot.getAxis("left").enableAutoSIPrefix(False)
        self.drift_plot.addLegend(offset=(10, -10), **LEGEND)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["quantity", "value"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().hide()
        self.note = QLabel()
        self.note.setWordWrap(True)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.plots)
        split.addWidget(self.table)
        split.setSizes([520, 300])
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self.note)
        layout.addWidget(split, 1)
        self.setCentralWidget(body)
        self.resize(1500, 850)
        self._draw()

    @classmethod
    def open(cls, path: str | Path, parent=None) -> CharacterisationView:
        return cls(board_stats.load(path, require=("stuck", "verify")), parent)

    def _draw(self) -> None:
        data = self.data
        st = board_stats.stuck(data)
        g = np.asarray(data["stuck"]["after_g_max"], float) * US
        self.image.setImage(g, autoLevels=False)
        self.colour_bar.setLevels((float(g.min()), float(max(g.max(), g.min() + 1e-9))))
        rows, cols = np.nonzero(st["map"])
        self.stuck.setData(cols + 0.5, rows + 0.5)

        rn = board_stats.read_noise(data)
        gc, s = rn["g"][rn["mask"]] * US, rn["s"][rn["mask"]] * US
        pick = np.random.default_rng(0).permutation(gc.size)[:MAX_POINTS]
        self.scatter = self.noise_plot.plot(gc[pick], s[pick], pen=None, symbol="o", symbolSize=3,
                                            symbolPen=None, symbolBrush=(31, 119, 180, 70), name=f"cells ({gc.size})")
        lv = rn["levels"]
        self.noise_plot.plot(lv[:, 0] * US, lv[:, 1] * US, pen=None, symbol="o", symbolSize=8,
                             symbolBrush="#d62728", name="levels (geometric mean)")
        grid = np.linspace(0, gc.max(), 100) / US
        self.noise_plot.plot(grid * US, np.sqrt((rn["rel"] * grid) ** 2 + rn["abs"] ** 2) * US,
                             pen=pg.mkPen("k", width=2),
                             name=f"fit: {rn['rel']:.3f} G, {rn['abs'] * US:.2f} µS, d2d {rn['d2d']:.2f}")

        self.drift_curves = []
        if "drift" in data.steps and data["drift"]["times"].size:
            dr = board_stats.drift(data)
            for i, target in enumerate(data["verify"]["targets"]):
                colour = UNIT_COLOURS[i % len(UNIT_COLOURS)]
                self.drift_curves.append(self.drift_plot.plot(
                    dr["times"], dr["ratio"][:, i], pen=pg.mkPen(colour), symbol="o", symbolSize=5,
                    symbolBrush=colour, name=f"{target * US:.1f} µS"))
            self.drift_plot.getAxis("bottom").setTicks([[(np.log10(t), f"{t:.0f}") for t in dr["times"]], []])
            if dr["t0"] is not None:
                t = np.geomspace(dr["times"].min(), dr["times"].max(), 50)
                self.drift_plot.plot(t, np.maximum(t / dr["t0"], 1) ** -dr["nu"], pen=pg.mkPen("k", style=Qt.PenStyle.DashLine),
                                     name=f"fit: ν {dr['nu']:.3f}, t0 {dr['t0']:.1f} s")
        else:
            self.drift_plot.setTitle("drift: not measured")

        missing = [s for s in board_stats.STEPS if s not in data.steps]
        rows_ = board_stats.summary(data) if not missing else []
        self.table.setRowCount(len(rows_))
        for r, (k, v) in enumerate(rows_):
            self.table.setItem(r, 0, QTableWidgetItem(k))
            self.table.setItem(r, 1, QTableWidgetItem(v))
        board = data.board
        self.note.setText(f"{data.source}: {board.get('identity', board.get('name'))}, "
                          f"{board['array_shape'][0]} × {board['array_shape'][1]} cells; stuck cells (red): "
                          f"{st['high']} at g_max, {st['low']} at g_min"
                          + (f". Not measured: {', '.join(missing)} (the summary needs every step)" if missing else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labpnn.gui.characterisation_view", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="board.h5 from labpnn characterise crossbar")
    parser.add_argument("--screenshot", help="save the window as this PNG and exit")
    args = parser.parse_args(argv)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    try:
        view = CharacterisationView.open(args.file)
    except LabpnnError as exc:
        print(f"labpnn: error: {exc}", file=sys.stderr)
        return 2
    view.show()
    if args.screenshot:
        for _ in range(20):
            app.processEvents()
        frame = view.frameGeometry()
        shot = (view.screen().grabWindow(0, frame.x(), frame.y(), frame.width(), frame.height())
                if app.platformName() == "xcb" else view.grab())
        shot.save(args.screenshot)
        print(f"saved {args.screenshot} ({shot.width()} x {shot.height()})")
        return 0
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
