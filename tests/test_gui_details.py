"""GUI details: an opened run file's state and elapsed time in the Run dock; no axes around an
empty conductance map; the histogram is the read-back error; accuracy labels clear of the
legend and the axis' ends."""

from __future__ import annotations

import numpy as np

from labpnn.events import Deployed
from labpnn.gui.run_dock import clock
from labpnn.runlog import RunReader
from test_gui import bench, finished_run, settings, window  # noqa: F401 - the fixtures


def test_an_opened_run_file_shows_its_state_and_elapsed_time(qtbot, window, finished_run, monkeypatch):  # noqa: F811
    w = window
    assert w.run_dock.state_label.text() == "idle"
    # the tiny run may finish within a second: give the file a duration a clock shows
    monkeypatch.setattr(RunReader, "duration", lambda self: 3725.0)
    assert w.open_run(finished_run)
    assert w.run_dock.state_label.text() == "done"
    assert w.run_dock.elapsed.text() == clock(3725.0) == "1:02:05"
    assert not any(w.run_dock.buttons[b].isEnabled() for b in ("Pause", "Resume", "Abort", "Check"))


def test_conductance_axes_only_around_a_map_and_the_error_is_named_so(qtbot, window):  # noqa: F811
    dock = window.conductance
    plots = [p for p, _ in dock.maps.values()] + [dock.noise]
    assert not any(p.getAxis(side).isVisible() for p in plots for side in ("bottom", "left"))
    assert not dock.colour_bar.isVisible()
    assert dock.noise.titleLabel.text == "read-back error"
    g = np.full((4, 6), 2e-5)
    window.data.apply(Deployed(unit=0, revision=0, arrays={"g_target": g, "g_read": g + 1e-7, "weights": g[:, :3]}))
    window.redraw()
    assert all(p.getAxis(side).isVisible() for p in plots for side in ("bottom", "left"))
    assert "read-back error (programming + read noise)" in dock.note.text()
    dock.clear()
    assert not dock.noise.getAxis("left").isVisible()


def test_accuracy_labels_fit_below_the_legend_and_the_zero_tick_shows(qtbot, window):  # noqa: F811
    acc = window.training.acc
    lo, hi = acc.getViewBox().viewRange()[1]
    assert lo < 0 <= 100 + 15 < hi        # the 0 % tick inside the view; 100 % bars' labels below the legend
