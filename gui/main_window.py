"""The bench window: docks around one run, live from the engine or read from a run file."""

from __future__ import annotations

from pathlib import Path

import yaml
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QFileDialog, QMainWindow, QMessageBox

from labpnn.bench import Bench
from labpnn.engine import Run
from labpnn.errors import LabpnnError
from labpnn.events import Event
from labpnn.gui.bridge import EventBridge
from labpnn.gui.characterisation_view import CharacterisationView
from labpnn.gui.episodes_dock import EpisodesDock
from labpnn.gui.events_dock import EventsDock, FaultBanner
from labpnn.gui.feature_map_dock import FeatureMapDock
from labpnn.gui.hardware_dock import ConductanceDock, FrameDock
from labpnn.gui.info_plane_dock import InfoPlaneDock
from labpnn.gui.instruments_dock import InstrumentsDock
from labpnn.gui.run_data import RunData
from labpnn.gui.run_dock import RunDock
from labpnn.gui.run_progress import RunProgress
from labpnn.gui.run_worker import RunWorker
from labpnn.gui.training_dock import TrainingDock
from labpnn.recipe import packaged
from labpnn.recipes import DEFAULT_RECIPE
from labpnn.run_state import LIVE
from labpnn.runlog import RunReader

REDRAW_MS = 100          # plots redraw at most 10 times a second, however fast events come
FOLLOW_MS = 1000         # a run file being written elsewhere is re-read once a second
LIVE_STATES = frozenset(s.value for s in LIVE)  # a run file in one of these is being written


class MainWindow(QMainWindow):
    """`bench` may be None (the bench file did not load: `bench_error` says why); run files can
    still be opened. `settings` keeps the layout between sessions."""

    def __init__(self, bench: Bench | None, settings: QSettings | None = None, bench_error: str = ""):
        super().__init__()
        self.setWindowTitle("labpnn bench")
        self.bench = bench
        self.settings = settings if settings is not None else QSettings()
        self.data = RunData()
        self._episodes_shown = False  # the Episodes dock brought to the front for this run
        self.progress: RunProgress | None = None
        self.worker: RunWorker | None = None
        self.reader: RunReader | None = None
        self.closing = False
        self.bridge = EventBridge(self)
        self.bridge.subscribe(self._event)

        self.banner = FaultBanner(self)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.banner)
        self.run_dock = RunDock(bench, self)
        self.instruments = InstrumentsDock(bench.devices if bench else {}, self, error=bench_error)
        self.info_plane = InfoPlaneDock(self)
        self.training = TrainingDock(self)
        self.conductance = ConductanceDock(self)
        self.frame = FrameDock(self)
        self.events = EventsDock(self)
        self.feature_map = FeatureMapDock(self)
        self.episodes = EpisodesDock(self)
        self.views = (self.info_plane, self.training, self.conductance, self.frame, self.events, self.episodes)
        self._arrange()
        self._menus()

        for signal, slot in ((self.run_dock.start, self.start_run), (self.run_dock.pause, self.pause_run),
                             (self.run_dock.resume, self.resume_run), (self.run_dock.abort, self.abort_run),
                             (self.run_dock.check, self.check_run),
                             (self.banner.pause, self.pause_run), (self.banner.resume, self.resume_run),
                             (self.banner.abort, self.abort_run)):
            signal.connect(slot)
        self.redraw_timer = QTimer(self, interval=REDRAW_MS)
        self.redraw_timer.timeout.connect(self.redraw)
        self.redraw_timer.start()
        self.follow_timer = QTimer(self, interval=FOLLOW_MS)
        self.follow_timer.timeout.connect(self._follow)

        self._restore()
        recipe = str(self.settings.value("recipe", DEFAULT_RECIPE))
        self.run_dock.load_packaged(recipe if recipe in packaged() else DEFAULT_RECIPE)
        self._set_state("idle")

    # -- layout
    def _arrange(self) -> None:
        self.setDockNestingEnabled(True)
        left, right = Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea
        self.addDockWidget(left, self.run_dock)
        self.addDockWidget(right, self.info_plane)
        self.splitDockWidget(self.run_dock, self.instruments, Qt.Orientation.Vertical)
        self.splitDockWidget(self.info_plane, self.training, Qt.Orientation.Horizontal)
        self.splitDockWidget(self.info_plane, self.conductance, Qt.Orientation.Vertical)
        self.splitDockWidget(self.training, self.events, Qt.Orientation.Vertical)
        self.tabifyDockWidget(self.conductance, self.frame)
        self.tabifyDockWidget(self.frame, self.feature_map)
        self.tabifyDockWidget(self.training, self.episodes)
        self.conductance.raise_()
        self.training.raise_()
        self.resize(1600, 1000)
        self.resizeDocks([self.run_dock, self.info_plane, self.training], [420, 640, 540],
                         Qt.Orientation.Horizontal)
        self.resizeDocks([self.run_dock, self.instruments], [560, 440], Qt.Orientation.Vertical)
        self.resizeDocks([self.info_plane, self.conductance], [520, 480], Qt.Orientation.Vertical)

    def _menus(self) -> None:
        file = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open run…", self, shortcut=QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self._open_dialog)
        self.continue_action = QAction("&Continue run…", self)
        self.continue_action.setToolTip("resume a killed or aborted run from its file")
        self.continue_action.triggered.connect(self._continue_dialog)
        board_action = QAction("Open &characterisation…", self)
        board_action.setToolTip("a crossbar characterisation file (labpnn characterise crossbar)")
        board_action.triggered.connect(self._characterisation_dialog)
        quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        for action in (self.open_action, self.continue_action, board_action, quit_action):
            file.addAction(action)
        view = self.menuBar().addMenu("&View")
        for dock in (self.run_dock, self.instruments, self.info_plane, self.training, self.conductance,
                     self.frame, self.feature_map, self.events, self.episodes):
            view.addAction(dock.toggleViewAction())

    def _restore(self) -> None:
        geometry, state = self.settings.value("geometry"), self.settings.value("window_state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)
        self.banner.hide()  # a banner belongs to a fault of this session only

    def save_layout(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("window_state", self.saveState())
        self.settings.setValue("recipe", self.run_dock.chooser.currentText())
        self.settings.sync()

    # -- what is shown
    def show_data(self, data: RunData) -> None:
        """Show `data` from scratch (a new run, or a run file)."""
        for view in self.views:
            view.clear()
        self.data = data
        self._episodes_shown = False
        self.redraw()

    def redraw(self) -> None:
        """Redraw the views whose data changed since the last redraw (the throttle)."""
        changed, self.data.changed = self.data.changed, set()
        for view in self.views:
            if view.sections & changed:
                view.render(self.data)
        if self.data.episodes and not self._episodes_shown:  # an RL run: its returns in front, once
            self.episodes.raise_()
            self._episodes_shown = True
        if self.progress is not None:
            self.run_dock.show_progress(self.progress)

    def _set_state(self, state: str) -> None:
        active = self.running()
        self.run_dock.set_state(state, active)
        self.banner.set_run_state(state, active)
        self.instruments.set_run_active(active and state != "paused")
        self.open_action.setEnabled(not active)
        self.continue_action.setEnabled(not active and self.bench is not None)

    def running(self) -> bool:
        """A run is on from Start until its engine thread has ended and its end is shown."""
        return self.worker is not None

    # -- a live run
    def start_run(self) -> None:
        recipe = self.run_dock.recipe
        if recipe is None or self.running() or self.bench is None:
            return
        path = self.run_dock.output_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            run = Run(recipe, self.bench, path)
        except (LabpnnError, OSError) as exc:
            self.run_dock.show_message(str(exc), error=True)
            return
        self._launch(run, RunData.for_recipe(recipe))

    def continue_run(self, path: str | Path) -> None:
        """Resume a killed or aborted run from its file, its recorded data shown first."""
        if self.running() or self.bench is None:
            return
        try:
            with RunReader(path) as reader:
                data = RunData.from_reader(reader)
            run = Run.reopen(path, self.bench)
        except LabpnnError as exc:
            QMessageBox.warning(self, "Cannot continue the run", str(exc))
            return
        self.run_dock.set_recipe_text(yaml.safe_dump(run.recipe.model_dump(mode="json"), sort_keys=False),
                                      f"recipe stored in {path}")
        self._launch(run, data)

    def _launch(self, run: Run, data: RunData) -> None:
        self._stop_following()
        self.banner.hide()
        self.show_data(data)
        self.feature_map.set_run(None, [])
        self.progress = RunProgress(run.recipe)
        for (unit, _), traj in data.trajectories.items():  # steps a continued run has done already
            self.progress.steps_done[unit] = max(self.progress.steps_done[unit], traj.steps[-1] + 1)
        self.worker = RunWorker(run, self.bridge, self)
        self.worker.finished.connect(self._finished)
        self.worker.start()
        self.setWindowTitle(f"labpnn bench: {run.path}")
        self.run_dock.show_message(f"running {run.recipe.name} → {run.path}", error=False)
        self._set_state("starting")  # until the engine's first event says "running"

    def _event(self, ev: Event) -> None:
        """An engine event, on the GUI thread: only taken in here; drawn by the redraw timer."""
        self.data.apply(ev)
        if self.progress is not None:
            self.progress.apply(ev)
        if ev.kind == "state":
            self._set_state(ev.data["state"])
            self.instruments.refresh_all()
        elif ev.kind == "fault":
            self.banner.show_fault(ev.message, ev.unit)

    def _finished(self, state: str, error: str) -> None:
        self.worker.join()  # finished is its thread's last act
        path = self.worker.run.path
        self.worker = None
        self._set_state(state)
        self.instruments.refresh_all()
        self.redraw()
        self.feature_map.set_run(path, list(self.data.units.values()))
        if state == "failed":
            self.run_dock.show_message(f"the run failed: {error}", error=True)
        elif state == "idle":
            self.run_dock.show_message(f"aborted; File > Continue run… resumes {path}", error=False)
        else:
            self.run_dock.show_message(f"done: {path}", error=False)
        if self.closing:
            self.close()

    def pause_run(self) -> None:
        if self.running():
            self.worker.run.pause()

    def resume_run(self) -> None:
        if self.running():
            self.worker.run.unpause()

    def check_run(self) -> None:
        if self.running():
            self.worker.run.check()

    def abort_run(self, reason: str = "aborted by the operator") -> None:
        if self.running():
            self.worker.run.abort(reason)

    # -- a run file
    def open_run(self, path: str | Path) -> bool:
        """Show a run file; one still being written is followed live."""
        if self.running():
            return False
        reader = None
        try:
            reader = RunReader(path)
            data = RunData.from_reader(reader)
        except LabpnnError as exc:
            if reader is not None:
                reader.close()
            QMessageBox.warning(self, "Cannot open the run file", str(exc))
            return False
        self._stop_following()
        self.reader = reader
        self.progress = None
        self.run_dock.show_file(data.state, reader.duration())
        self.show_data(data)
        self.feature_map.set_run(path, list(data.units.values()))
        self.setWindowTitle(f"labpnn bench: {path} ({data.state})")
        if data.state in LIVE_STATES:
            self.follow_timer.start()
        return True

    def _follow(self) -> None:
        try:
            self.reader.refresh()
            data = RunData.from_reader(self.reader)
        except LabpnnError as exc:
            self.statusBar().showMessage(f"stopped following {self.reader.path}: {exc}")
            self._stop_following()
            return
        self.data = data  # the same run, grown: the views update what they show
        self.redraw()
        self.run_dock.show_file(data.state, self.reader.duration())
        self.setWindowTitle(f"labpnn bench: {self.reader.path} ({data.state})")
        if data.state not in LIVE_STATES:
            self.follow_timer.stop()

    def _stop_following(self) -> None:
        self.follow_timer.stop()
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open run", "runs", "Run files (*.h5);;All files (*)")
        if path:
            self.open_run(path)

    def _continue_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Continue run", "runs", "Run files (*.h5);;All files (*)")
        if path:
            self.continue_run(path)

    def open_characterisation(self, path: str | Path) -> CharacterisationView | None:
        """Show a crossbar characterisation file in its own window."""
        try:
            view = CharacterisationView.open(path, self)
        except LabpnnError as exc:
            QMessageBox.warning(self, "Cannot open the characterisation", str(exc))
            return None
        view.show()
        return view

    def _characterisation_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open characterisation", "", "Characterisations (*.h5);;All files (*)")
        if path:
            self.open_characterisation(path)

    # -- closing
    def confirm_abort_on_close(self) -> bool:
        answer = QMessageBox.question(
            self, "A run is in progress",
            "A run is in progress. Abort it (instruments to their safe state, everything recorded is kept "
            "and File > Continue run… resumes it) and close?")
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event) -> None:
        if self.running():
            event.ignore()
            if not self.closing:
                if not self.confirm_abort_on_close():
                    return
                self.closing = True
                self.abort_run("the window was closed")
                self.statusBar().showMessage("aborting the run; the window closes when the instruments are safe")
            return  # closed again by _finished
        self.save_layout()
        self.redraw_timer.stop()
        self._stop_following()
        self.instruments.shutdown()
        event.accept()

