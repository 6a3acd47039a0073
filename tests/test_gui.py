"""The bench GUI on the simulated bench (pytest-qt, offscreen): live runs, run files, recipes, faults."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from labpnn import cli
from labpnn.bench import Bench
from labpnn.engine import Run, State
from labpnn.errors import TransportError
from labpnn.events import Deployed, Fault, FaultKind, Frame, InfoEvent, InfoPlane
from labpnn.gui.instruments_dock import InstrumentsDock
from labpnn.gui.main_window import MainWindow
from labpnn.protocols import Health
from labpnn.recipe import load_recipe
from labpnn.runlog import RunReader

WAIT_MS = 60_000  # generous: the suite shares two cores

TINY = """\
name: gui-tiny
dataset: {{name: digits, n_train: 300, n_test: 100}}
units:
  - {{kind: crossbar, instrument: crossbar, out: 16}}
  - {{kind: crossbar, instrument: crossbar, out: 8}}
pib: {{steps: {steps}, batch_size: 64}}
measure: {{batch_size: 50}}
readout: {{steps: 30}}
"""


def tiny_recipe(tmp_path, steps: int):
    path = tmp_path / f"tiny-{steps}.yaml"
    path.write_text(TINY.format(steps=steps))
    return path


@pytest.fixture
def bench():
    bench = Bench.load(None)  # the packaged bench: the in-process twins
    yield bench
    bench.close()


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "gui.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, bench, settings):
    w = MainWindow(bench, settings)
    qtbot.addWidget(w)
    w.show()
    yield w
    if w.running():  # a failed test must not leave the engine running
        w.abort_run("test teardown")
        qtbot.waitUntil(lambda: not w.running(), timeout=WAIT_MS)
    w.close()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A small run executed headless to its end, and its file."""
    tmp = tmp_path_factory.mktemp("finished")
    bench = Bench.load(None)
    try:
        path = tmp / "finished.h5"
        assert Run(load_recipe(tiny_recipe(tmp, steps=8)), bench, path).execute() is State.DONE
    finally:
        bench.close()
    return path


def points(w: MainWindow) -> int:
    return sum(len(scatter.getData()[0]) for _, scatter in w.info_plane.items.values())


def start(qtbot, w: MainWindow, recipe_path, out):
    w.run_dock.load_file(recipe_path)
    assert w.run_dock.recipe is not None, w.run_dock.message.text()
    w.run_dock.output.setText(str(out))
    qtbot.mouseClick(w.run_dock.buttons["Start"], Qt.MouseButton.LeftButton)
    assert w.running()
    qtbot.waitUntil(lambda: points(w) >= 2, timeout=WAIT_MS)


def assert_plotted_equals_file(w: MainWindow, path) -> None:
    with RunReader(path) as reader:
        for unit in reader.units:
            info = unit.info_plane
            curve, scatter = w.info_plane.items[(unit.index, 0)]
            x, y = scatter.getData()
            assert len(info) > 0
            np.testing.assert_array_equal(x, info["I_XZ"])
            np.testing.assert_array_equal(y, info["I_YZ"])
            steps, loss = w.training.curves[(unit.index, 0)].getData()
            np.testing.assert_array_equal(steps, info["step"])
            np.testing.assert_array_equal(loss, info["loss"])
            deployed = unit.deployed
            if unit.index == w.conductance.unit.currentData():
                np.testing.assert_allclose(w.conductance.maps["g_read"][1].image, deployed["g_read"] * 1e6)
        assert len(w.info_plane.items) == len(reader.units)
        assert w.events.model.rowCount() == len(reader.events)
        readout = {a["split"]: a["value"] for a in reader.accuracies if a["unit"] is None}
        assert w.data.accuracies[(None, "readout", "test")] == readout["test"]


def test_live_run_pause_resume_abort(qtbot, window, tmp_path):
    w = window
    out = tmp_path / "live.h5"
    start(qtbot, w, tiny_recipe(tmp_path, steps=400), out)
    run = w.worker.run
    qtbot.waitUntil(lambda: w.run_dock.state == "running", timeout=WAIT_MS)
    assert w.run_dock.buttons["Pause"].isEnabled() and not w.run_dock.buttons["Start"].isEnabled()
    assert w.run_dock.editor.isReadOnly()

    qtbot.mouseClick(w.run_dock.buttons["Check"], Qt.MouseButton.LeftButton)  # on-demand health checks
    qtbot.waitUntil(lambda: any("self-test passed" in row.message for row in w.data.log), timeout=WAIT_MS)

    qtbot.mouseClick(w.run_dock.buttons["Pause"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.run_dock.state == "paused", timeout=WAIT_MS)
    assert run.state is State.PAUSED
    assert w.run_dock.buttons["Resume"].isEnabled() and not w.run_dock.buttons["Pause"].isEnabled()
    paused_at = points(w)

    qtbot.mouseClick(w.run_dock.buttons["Resume"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: points(w) >= paused_at + 2, timeout=WAIT_MS)
    assert w.run_dock.state == "running"
    assert w.run_dock.elapsed.text() != "–" and w.run_dock.bar.value() > 0

    qtbot.mouseClick(w.run_dock.buttons["Abort"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.running(), timeout=WAIT_MS)
    assert w.run_dock.state == "idle" and run.state is State.IDLE
    assert not any(t.name == "labpnn-engine" for t in threading.enumerate())
    assert w.run_dock.buttons["Start"].isEnabled() and not w.run_dock.buttons["Abort"].isEnabled()
    with RunReader(out) as reader:
        assert reader.state == "idle" and "aborted" in reader.reason
        recorded = len(reader.unit(0).info_plane)
        assert recorded >= paused_at + 2
    assert any("aborted" in w.events.model.item(r, 3).text() for r in range(w.events.model.rowCount()))

    w.continue_run(out)  # File > Continue run…: what was recorded is shown, then the run goes on
    assert w.running() and points(w) == recorded
    assert w.run_dock.recipe is not None and w.run_dock.recipe.name == "gui-tiny"
    qtbot.waitUntil(lambda: points(w) >= recorded + 2, timeout=WAIT_MS)
    w.abort_run()
    qtbot.waitUntil(lambda: not w.running(), timeout=WAIT_MS)
    with RunReader(out) as reader:
        np.testing.assert_array_equal(reader.unit(0).info_plane["step"], np.arange(points(w)))


def test_closing_during_a_run_asks_then_aborts_and_waits(qtbot, window, tmp_path, monkeypatch):
    w = window
    out = tmp_path / "closed.h5"
    start(qtbot, w, tiny_recipe(tmp_path, steps=400), out)
    run = w.worker.run
    asked = []

    def answer(reply):
        def question(*args, **kwargs):
            asked.append(args)
            return reply
        monkeypatch.setattr(QMessageBox, "question", question)

    answer(QMessageBox.StandardButton.No)
    w.close()
    assert len(asked) == 1 and w.isVisible() and w.running()

    answer(QMessageBox.StandardButton.Yes)
    w.close()
    qtbot.waitUntil(lambda: not w.isVisible(), timeout=WAIT_MS)
    assert len(asked) == 2 and not w.running() and run.state is State.IDLE
    with RunReader(out) as reader:
        assert reader.state == "idle" and "window was closed" in reader.reason


def test_follow_a_live_file_then_open_it_finished(qtbot, window, bench, tmp_path):
    """A run written by another engine is followed live, and the finished file is drawn exactly."""
    w = window
    path = tmp_path / "other.h5"
    run = Run(load_recipe(tiny_recipe(tmp_path, steps=12)), bench, path)
    first_step = threading.Event()

    def pause_at_first_step(ev):  # the file stays live (running, then paused) until resumed below
        if ev.kind == "info_plane" and not first_step.is_set():
            run.pause()
            first_step.set()

    run.bus.subscribe(pause_at_first_step)
    engine = threading.Thread(target=run.execute)
    engine.start()
    try:
        qtbot.waitUntil(first_step.is_set, timeout=WAIT_MS)
        assert w.open_run(path)
        assert w.follow_timer.isActive() and points(w) >= 1
        qtbot.waitUntil(lambda: w.data.state == "paused", timeout=WAIT_MS)
        assert "(paused)" in w.windowTitle()
        run.unpause()
        qtbot.waitUntil(lambda: not w.follow_timer.isActive(), timeout=WAIT_MS)  # the file says done
    finally:
        run.unpause()
        engine.join(60)
    assert w.data.state == "done" and points(w) == 2 * 12
    assert_plotted_equals_file(w, path)


def test_open_finished_run(qtbot, window, finished_run):
    w = window
    assert w.open_run(finished_run)
    assert not w.follow_timer.isActive()
    assert_plotted_equals_file(w, finished_run)
    assert "finished.h5" in w.windowTitle()
    bars = w.training.bars["test"].opts["height"]
    assert len(bars) == 3  # probe of each unit, readout


def test_a_file_that_is_not_a_run_is_refused_with_its_reason(qtbot, window, tmp_path, monkeypatch):
    bad = tmp_path / "notes.h5"
    bad.write_text("not HDF5")
    warnings = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: warnings.append(text))
    assert not window.open_run(bad)
    assert len(warnings) == 1 and str(bad) in warnings[0]
    assert window.reader is None and not window.follow_timer.isActive()


def test_invalid_recipe_blocks_start(qtbot, window, tmp_path):
    w = window
    editor, start_button = w.run_dock.editor, w.run_dock.buttons["Start"]
    good = TINY.format(steps=5)
    for bad, says in ((good.replace("out: 16", "out: 0"), "units.0.out"),
                      (good.replace("instrument: crossbar, out: 8", "instrument: nosuch, out: 8"), "nosuch"),
                      (good + "units: [\n", "line"),
                      (good.replace("name: gui-tiny", "nmae: gui-tiny"), "nmae")):
        editor.setPlainText(bad)
        assert not start_button.isEnabled()  # at once, before the debounced check
        qtbot.waitUntil(lambda says=says: says in w.run_dock.message.text(), timeout=5000)
        assert "c62828" in w.run_dock.message.styleSheet()  # red
        assert not start_button.isEnabled() and w.run_dock.recipe is None
        qtbot.mouseClick(start_button, Qt.MouseButton.LeftButton)
        assert w.worker is None
    editor.setPlainText(good)
    qtbot.waitUntil(start_button.isEnabled, timeout=5000)
    assert w.run_dock.recipe.name == "gui-tiny"


def test_output_file_that_exists_is_refused(qtbot, window, tmp_path):
    w = window
    out = tmp_path / "taken.h5"
    out.write_bytes(b"")
    w.run_dock.load_file(tiny_recipe(tmp_path, steps=5))
    w.run_dock.output.setText(str(out))
    qtbot.mouseClick(w.run_dock.buttons["Start"], Qt.MouseButton.LeftButton)
    assert w.worker is None
    assert "exists already" in w.run_dock.message.text()


def test_fault_banner_and_event_filter(qtbot, window):
    w = window
    assert not w.banner.isVisible()
    detail = "unit 1: 1 broken output channel(s) while measuring train: stuck: channel 17"
    then = "the run pauses: Resume keeps going with them, Abort stops (resumable)"
    message = f"{detail}; {then}"
    w.bridge.event.emit(InfoEvent(text="injected simulated fault"))
    w.bridge.event.emit(Fault(unit=1, fault=FaultKind.BROKEN_CHANNELS, channels=(17,), split="train", action="pause",
                              detail=detail, then=then))
    qtbot.waitUntil(w.banner.isVisible, timeout=5000)
    assert message in w.banner.message.text() and "unit 1" in w.banner.message.text()
    assert not w.banner.buttons["Abort"].isEnabled()  # no run to abort
    qtbot.waitUntil(lambda: w.events.model.rowCount() == 2, timeout=5000)
    w.events.kind.setCurrentText("fault")
    assert w.events.proxy.rowCount() == 1
    assert w.events.proxy.index(0, 3).data() == message
    w.events.kind.setCurrentText("all kinds")
    assert w.events.proxy.rowCount() == 2
    qtbot.mouseClick(w.banner.buttons["Dismiss"], Qt.MouseButton.LeftButton)
    assert not w.banner.isVisible()


def test_plots_are_throttled(qtbot, window, monkeypatch):
    """Thousands of events from another thread are drawn a few times, not thousands."""
    w = window
    renders = []
    original = w.info_plane.render
    monkeypatch.setattr(w.info_plane, "render", lambda data: (renders.append(1), original(data)))
    n = 3000

    def engine():
        for step in range(n):
            w.bridge.event.emit(InfoPlane(unit=0, step=step, I_XZ=step / n, I_YZ=1 - step / n, revision=0))

    thread = threading.Thread(target=engine)
    thread.start()
    thread.join()
    qtbot.waitUntil(lambda: points(w) == n, timeout=WAIT_MS)
    assert len(renders) in range(1, 100)  # some redraws, far fewer than events


def test_layout_is_restored(qtbot, bench, settings):
    first = MainWindow(bench, settings)
    qtbot.addWidget(first)
    first.show()
    first.events.hide()
    first.frame.raise_()
    first.close()
    second = MainWindow(bench, settings)
    qtbot.addWidget(second)
    second.show()
    assert not second.events.isVisible() and second.info_plane.isVisible()
    second.close()


def test_instruments_dock(qtbot, window, bench):
    dock = window.instruments
    name = next(iter(bench.devices))
    item = dock.items[name]
    dock.tree.setCurrentItem(item)
    qtbot.waitUntil(lambda: not dock.calls.busy(name), timeout=WAIT_MS)
    assert "simulated" in item.text(1)
    qtbot.mouseClick(dock.buttons["connect"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "· connected" in item.text(1) and not dock.calls.busy(name), timeout=WAIT_MS)
    assert bench.devices[name].connected
    assert "healthy" in item.text(1)  # connect self-tests
    identity = {item.child(i).text(0): item.child(i).text(1) for i in range(item.childCount())}["identity"]
    assert identity == bench.devices[name].identity()
    assert dock.buttons["disconnect"].isEnabled() and not dock.buttons["connect"].isEnabled()
    qtbot.mouseClick(dock.buttons["disconnect"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "disconnected" in item.text(1) and not dock.calls.busy(name), timeout=WAIT_MS)
    assert not bench.devices[name].connected


def test_labpnn_gui_command_opens_a_run_file_even_without_a_bench(qtbot, tmp_path, finished_run):
    QSettings.setPath(QSettings.Format.NativeFormat, QSettings.Scope.UserScope, str(tmp_path))
    bad = tmp_path / "instruments.yaml"
    bad.write_text("instruments:\n  crossbar: {driver: no-such-driver}\n")
    seen = {}

    def look():
        w = next(w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible())
        seen.update(title=w.windowTitle(), points=points(w), error=w.instruments.error.text(),
                    start=w.run_dock.buttons["Start"].isEnabled())
        w.close()

    QTimer.singleShot(0, look)
    assert cli.main(["gui", "--config", str(bad), str(finished_run)]) == 0
    assert "finished.h5" in seen["title"] and seen["points"] > 0
    assert "no-such-driver" in seen["error"] and not seen["start"]


def test_hardware_views_from_events(qtbot, window):
    w = window
    rng = np.random.default_rng(0)
    g_target = rng.uniform(1e-6, 40e-6, (6, 8))
    g_read = g_target + rng.normal(0, 1e-6, g_target.shape)
    w.bridge.event.emit(Deployed(unit=0, revision=0, arrays={"weights": rng.normal(size=(6, 4)), "g_target": g_target,
                                                              "g_read": g_read}))
    frame = rng.uniform(0, 4000, (32, 48))
    w.bridge.event.emit(Frame(unit=1, frame=frame, what="slm, camera"))
    qtbot.waitUntil(lambda: w.conductance.unit.count() == 1 and w.frame.image.image is not None, timeout=5000)
    np.testing.assert_allclose(w.conductance.maps["g_target"][1].image, g_target * 1e6)
    np.testing.assert_allclose(w.conductance.maps["g_read"][1].image, g_read * 1e6)
    lo, hi = w.conductance.colour_bar.levels()
    assert lo == pytest.approx(min(g_target.min(), g_read.min()) * 1e6)
    assert hi == pytest.approx(max(g_target.max(), g_read.max()) * 1e6)
    edges, counts = w.conductance.histogram.getData()
    assert counts.sum() == g_target.size
    assert "µS" in w.conductance.note.text()
    np.testing.assert_array_equal(w.frame.image.image, frame.T)
    assert "from slm, camera: 32 × 48" in w.frame.title.text()


class GatedDevice:
    """A test double of a real instrument: connect blocks until the test opens the gate, or fails."""

    simulated = False

    def __init__(self, name, fail: str = ""):
        self.name, self.fail, self.gate, self._connected = name, fail, threading.Event(), False

    @property
    def connected(self):
        return self._connected

    def connect(self):
        assert self.gate.wait(30)
        if self.fail:
            raise TransportError(self.fail, self.name)
        self._connected = True

    def close(self):
        self._connected = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def identity(self):
        return "ACME,XBAR-1,42,2.0"

    def reset(self):
        pass

    def safe_state(self):
        pass

    def self_test(self):
        return Health(False, 7, "ADC column 17 does not respond")

    def snapshot(self):
        return {"identity": self.identity() if self._connected else None, "adc": {"bits": 10}}


def test_instrument_calls_run_off_the_gui_thread(qtbot):
    slow, broken = GatedDevice("slow"), GatedDevice("broken", fail="no reply within 2 s")
    dock = InstrumentsDock({"slow": slow, "broken": broken})
    qtbot.addWidget(dock)
    qtbot.waitUntil(lambda: not dock.calls.busy("slow") and not dock.calls.busy("broken"), timeout=5000)
    assert "real · disconnected" in dock.items["slow"].text(1)

    dock.request("connect", "slow")  # returns at once although the instrument has not answered
    assert dock.items["slow"].text(1) == "connect…" and dock.calls.busy("slow")
    dock.tree.setCurrentItem(dock.items["slow"])
    assert not dock.buttons["reset"].isEnabled() and dock.buttons["safe state"].isEnabled()
    slow.gate.set()
    qtbot.waitUntil(lambda: not dock.calls.busy("slow"), timeout=5000)
    assert dock.items["slow"].text(1) == "real · connected · fault 7"
    assert "ADC column 17" in dock.items["slow"].child(1).text(1)

    broken.gate.set()
    dock.request("connect", "broken")
    qtbot.waitUntil(lambda: not dock.calls.busy("broken"), timeout=5000)
    assert "disconnected" in dock.items["broken"].text(1)
    assert "connect failed: broken: no reply within 2 s" in dock.items["broken"].toolTip(1)
    dock.shutdown()


def test_installed_pyside_keeps_reference_counts(qtbot):
    """PySide6 6.12.0 on Python 3.11 drops a reference to None on every void call and a long
    live run dies in a fatal none_dealloc; pyproject excludes it. This catches a relapse."""
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(5000):
        probe.setObjectName("x")
    assert abs(sys.getrefcount(None) - before) < 100



RL_TINY = """\
name: gui-rl-tiny
env: {id: CartPole-v1, episodes: 4, bounds: [2.4, 3.0, 0.2095, 3.5], levels: 4}
units:
  - {kind: scattering, instrument: opu-rl1, out: 8, activation: sigmoid, encoding: threshold}
  - {kind: scattering, instrument: opu-rl2, out: 2, activation: none, encoding: thermometer, bits: 4}
scheme: {name: online, warmup: 30, calibration: 20, batch_size: 16, replay: 500}
objective: pib-td
"""


def test_episodes_dock_shows_returns_and_their_running_average_live(qtbot, window, tmp_path):
    pytest.importorskip("gymnasium")
    from labpnn.gui.episodes_dock import running_average

    w, path, out = window, tmp_path / "rl.yaml", tmp_path / "rl.h5"
    path.write_text(RL_TINY)
    w.run_dock.load_file(path)
    assert w.run_dock.recipe is not None, w.run_dock.message.text()
    assert "CartPole-v1" in w.run_dock.message.text()
    w.run_dock.output.setText(str(out))
    qtbot.mouseClick(w.run_dock.buttons["Start"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.running(), timeout=5 * WAIT_MS)  # an RL run starts slowly on a busy machine
    w.redraw()
    with RunReader(out) as reader:
        returns = [e["return"] for e in reader.episodes]
    assert len(returns) == 4
    assert w.data.episodes == list(enumerate(returns))  # drawn from the live events, not the file
    assert w.tabifiedDockWidgets(w.training) == [w.episodes]
    assert not w.episodes.visibleRegion().isEmpty() and w.training.visibleRegion().isEmpty()  # in front
    title = w.training.loss.getPlotItem().titleLabel.text
    assert "TD" in title and w.training.loss.getAxis("bottom").labelText == "learner step"
    x, y = w.episodes.returns.getData()
    np.testing.assert_array_equal(x, [0, 1, 2, 3])
    np.testing.assert_array_equal(y, returns)
    np.testing.assert_allclose(w.episodes.average.getData()[1], np.cumsum(returns) / np.arange(1, 5))
    np.testing.assert_allclose(running_average(np.array([1.0, 3.0, 5.0, 7.0]), window=2), [1, 2, 4, 6])
    w.training.raise_()
    assert w.open_run(out)  # from the file: the same curve, again in front
    w.redraw()
    np.testing.assert_array_equal(w.episodes.returns.getData()[1], returns)
    assert not w.episodes.visibleRegion().isEmpty()
