"""`labpnn gui [--config instruments.yaml] [RUN.h5 | board.h5]`: the bench window (a
characterisation file opens in its view)."""

from __future__ import annotations

import sys

import shiboken6
from PySide6.QtWidgets import QApplication

from labpnn.bench import Bench
from labpnn.board_stats import is_characterisation
from labpnn.errors import LabpnnError
from labpnn.gui.main_window import MainWindow


def main(config: str | None = None, run_file: str | None = None) -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("labpnn")
    app.setApplicationName("labpnn-gui")
    bench, error = None, ""
    try:
        bench = Bench.load(config)
    except LabpnnError as exc:
        error = f"the bench did not load: {exc}"
    window = MainWindow(bench, bench_error=error)
    window.show()
    if run_file is not None and is_characterisation(run_file):
        window.open_characterisation(run_file)
    elif run_file is not None:
        window.open_run(run_file)
    try:
        return app.exec()
    finally:
        shiboken6.delete(window)  # now, while the QApplication lives: not in random order at exit
        if bench is not None:
            bench.close()
