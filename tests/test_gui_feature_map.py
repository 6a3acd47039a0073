"""The GUI's feature map (pytest-qt, offscreen): a finished run's test features in 2-D, by label;
and an unsupervised run (no I(Y;Z)) shown live and from its file."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import QSettings, Qt

from labpnn.bench import Bench
from labpnn.engine import Run, State
from labpnn.events import Step
from labpnn.gui.run_data import RunData
from labpnn.gui.main_window import MainWindow
from engine_helpers import tiny_recipe, twin_bench

WAIT_MS = 60_000  # generous: the suite shares two cores


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feature-map")
    bench = twin_bench(tmp)
    try:
        path = tmp / "run.h5"
        recipe = tiny_recipe(pib={"steps": 5, "batch_size": 64}, objective="pib-2view",
                             augment=[{"name": "shift", "pixels": 1}])
        assert Run(recipe, bench, path).execute() is State.DONE
    finally:
        bench.close()
    return path


@pytest.fixture
def window(qtbot, tmp_path):
    bench = Bench.load(None)
    w = MainWindow(bench, QSettings(str(tmp_path / "gui.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()
    bench.close()


def points(dock) -> dict[str, int]:
    return {item.name(): len(item.data) for item in dock.plot.getPlotItem().items
            if isinstance(item, pg.ScatterPlotItem)}


def test_maps_a_finished_run_by_label(qtbot, window, finished_run):
    dock = window.feature_map
    assert not dock.button.isEnabled()  # nothing to map before a run
    assert window.open_run(finished_run)
    assert dock.unit.currentText() == "unit1 (crossbar)" and dock.button.isEnabled()
    dock.method.setCurrentText("pca")
    qtbot.mouseClick(dock.button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(points(dock)), timeout=WAIT_MS)
    found = points(dock)
    assert sorted(found) == [str(c) for c in range(10)] and sum(found.values()) == 100  # n_test
    assert "PCA" in dock.plot.getPlotItem().titleLabel.text and "100 test samples" in dock.note.text()
    traj = window.data.trajectories[(1, 0)]  # the run's own curves: loss and I(X;Z), no I(Y;Z)
    assert len(traj.steps) == 5 and np.isfinite(traj.loss).all() and np.isnan(traj.i_yz).all()


def test_unsupervised_steps_draw_live():
    data = RunData()
    data.apply(Step(unit=0, step=0, steps=3, loss=-1.5, values={"I_Z1Z2": 1.6, "I_XZ": 1.2}))
    traj = data.trajectories[(0, 0)]
    assert traj.steps == [0] and traj.loss == [-1.5] and traj.i_xz == [1.2] and np.isnan(traj.i_yz[0])
    assert {"info_plane", "training"} <= data.changed


def test_a_run_without_features_says_so(qtbot, window, tmp_path):
    bench = twin_bench(tmp_path)
    path = tmp_path / "aborted.h5"
    run = Run(tiny_recipe(), bench, path)
    run.bus.subscribe(lambda ev: run.abort("test") if ev.kind == "step" else None)
    assert run.execute() is State.IDLE
    bench.close()
    assert window.open_run(path)
    window.feature_map.method.setCurrentText("pca")
    window.feature_map.compute()
    qtbot.waitUntil(lambda: "cannot map" in window.feature_map.note.text(), timeout=WAIT_MS)
    assert "no measured test features yet" in window.feature_map.note.text()
    assert window.feature_map.button.isEnabled()
