"""The GUI's characterisation view (offscreen): the conductance map with its stuck cells, read
noise against conductance, drift curves and the summary table of a characterisation file."""

import h5py
import numpy as np
import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

from labpnn.gui.characterisation_view import CharacterisationView
from labpnn.gui.main_window import MainWindow

from labpnn.characterise import CharacteriseSettings

from test_characterise import small_job


@pytest.fixture(scope="module")
def board_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("view") / "board.h5"
    _, job = small_job(path, CharacteriseSettings(noise_rows=32, levels=6, drift_times=[40, 200]),
                       stuck_fraction=0.01, drift_nu=0.05, seed=2)
    job.run()
    return path


def test_the_view_draws_map_noise_drift_and_table(qtbot, board_file):
    view = CharacterisationView.open(board_file)
    qtbot.addWidget(view)
    assert view.image.image.shape == (256, 64)
    with h5py.File(board_file) as h5:
        stuck = int(np.count_nonzero(h5["stuck/map"][()]))
    assert stuck > 0 and len(view.stuck.data) == stuck
    assert len(view.scatter.xData) > 1000
    assert len(view.drift_curves) == 6 and all(len(c.xData) == 2 for c in view.drift_curves)
    assert view.drift_curves[0].yData[-1] < 0.95  # drifted down
    quantities = [view.table.item(r, 0).text() for r in range(view.table.rowCount())]
    assert {"stuck cells", "read noise", "drift", "ADC clipping"} <= set(quantities)


def test_a_file_missing_a_measurement_is_refused_with_its_name(qtbot, board_file, tmp_path, monkeypatch):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(board_file.read_bytes())
    with h5py.File(broken, "a") as h5:
        del h5["stuck"]
    window = MainWindow(None, QSettings(str(tmp_path / "layout.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    said = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: said.append(text))
    assert window.open_characterisation(broken) is None
    assert said and "'stuck'" in said[0] and "missing" in said[0]
    view = window.open_characterisation(board_file)
    assert view is not None and view.isVisible()
