"""Run control: the recipe (chosen and edited, validated as you type), the output file,
Start / Pause / Resume / Abort, the state, elapsed and remaining time, and phase progress."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (QComboBox, QDockWidget, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPlainTextEdit, QProgressBar, QPushButton, QToolButton)

from labpnn.errors import ConfigError
from labpnn.gui.dock_body import set_body
from labpnn.gui.run_progress import RunProgress
from labpnn.gui.run_worker import controls
from labpnn.config_errors import parse_yaml
from labpnn.recipe import Recipe, packaged, parse_recipe

OPEN_FILE = "Open recipe file…"
VALIDATE_AFTER_MS = 300
STATE_COLOURS = {"running": "#2e7d32", "pausing": "#f9a825", "paused": "#f9a825", "aborting": "#c62828",
                 "failed": "#c62828", "done": "#1565c0", "idle": "#616161"}


def check_recipe(text: str, where: str, bench) -> Recipe:
    """The recipe in `text`, valid and runnable on `bench`; ConfigError says what is wrong and where."""
    data = parse_yaml(text, where)
    recipe = parse_recipe(data, where)
    if bench is None:
        raise ConfigError("no bench is loaded (see the Instruments dock), so nothing can run")
    for name in recipe.instruments():
        bench[name]  # ConfigError naming the instruments the bench has
    return recipe


def clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class RunDock(QDockWidget):
    start = Signal()
    pause = Signal()
    resume = Signal()
    abort = Signal()
    check = Signal()

    def __init__(self, bench, parent=None):
        super().__init__("Run", parent)
        self.setObjectName("run")
        self.bench = bench
        self.recipe: Recipe | None = None   # the editor's recipe when valid
        self.where = "recipe"
        self.state = "idle"
        self.active = False

        self.chooser = QComboBox()
        self.chooser.addItems(packaged())
        self.chooser.addItem(OPEN_FILE)
        self.chooser.activated.connect(self._chosen)
        self.editor = QPlainTextEdit()
        self.editor.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.editor.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.editor.textChanged.connect(self._edited)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self._debounce = QTimer(self, singleShot=True, interval=VALIDATE_AFTER_MS)
        self._debounce.timeout.connect(self.validate)

        self.output = QLineEdit()
        self.output.setPlaceholderText("automatic: runs/RECIPE-DATE-TIME.h5")
        self.output.setToolTip("the HDF5 run file to write (must not exist yet)")
        browse = QToolButton(text="…")
        browse.clicked.connect(self._browse)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output, 1)
        out_row.addWidget(browse)

        self.buttons: dict[str, QPushButton] = {}
        button_row = QHBoxLayout()
        for name, signal in (("Start", self.start), ("Pause", self.pause), ("Resume", self.resume),
                             ("Abort", self.abort), ("Check", self.check)):
            button = QPushButton(name)
            button.clicked.connect(lambda _=False, s=signal: s.emit())
            button_row.addWidget(button)
            self.buttons[name] = button
        self.buttons["Check"].setToolTip("self-test every instrument of the run at the next checkpoint; "
                                         "the results appear in the events log")

        self.state_label = QLabel()
        self.elapsed = QLabel("–")
        self.remaining = QLabel("–")
        self.phase = QLabel("–")
        self.phase.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setFormat("%v / %m")
        status = QFormLayout()
        status.addRow("State:", self.state_label)
        status.addRow("Elapsed:", self.elapsed)
        status.addRow("Remaining:", self.remaining)
        status.addRow("Phase:", self.phase)
        status.addRow("", self.bar)

        form = QFormLayout()
        form.addRow("Recipe:", self.chooser)
        form.addRow("Output:", out_row)
        set_body(self, form, self.editor, self.message, button_row, status, stretch=self.editor)
        self.set_state("idle", False)

    # -- the recipe
    def load_packaged(self, name: str) -> None:
        self.chooser.setCurrentText(name)
        text = (resources.files("labpnn.recipes") / f"{name}.yaml").read_text()
        self.set_recipe_text(text, f"recipe {name}")

    def load_file(self, path: str | Path) -> None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            self.show_message(f"recipe {path}: cannot read it ({exc.strerror or exc})", error=True)
            return
        if self.chooser.findText(str(path)) < 0:
            self.chooser.insertItem(self.chooser.count() - 1, str(path))
        self.chooser.setCurrentText(str(path))
        self.set_recipe_text(text, f"recipe {path}")

    def set_recipe_text(self, text: str, where: str) -> None:
        self.where = where
        self.editor.setPlainText(text)
        self.validate()

    def _chosen(self, index: int) -> None:
        choice = self.chooser.itemText(index)
        if choice == OPEN_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Open recipe", "", "Recipes (*.yaml *.yml);;All files (*)")
            if path:
                self.load_file(path)
            else:
                self.chooser.setCurrentText(self.where.removeprefix("recipe "))
        elif choice in packaged():
            self.load_packaged(choice)
        else:
            self.load_file(choice)

    def _edited(self) -> None:
        self.recipe = None
        self._enable()
        self._debounce.start()

    def validate(self) -> None:
        """Check the editor's recipe now; Start is enabled only for a valid one."""
        self._debounce.stop()
        try:
            self.recipe = check_recipe(self.editor.toPlainText(), self.where, self.bench)
        except ConfigError as exc:
            self.recipe = None
            self.show_message(str(exc), error=True)
        else:
            units = ", ".join(f"{u.kind} {u.out}" for u in self.recipe.units)
            task = self.recipe.env.id if self.recipe.env else self.recipe.dataset.name
            self.show_message(f"✓ {self.recipe.name}: {task}, units {units}", error=False)
        self._enable()

    def show_message(self, text: str, error: bool) -> None:
        self.message.setText(text)
        self.message.setStyleSheet(f"color: {'#c62828' if error else '#2e7d32'};")

    # -- the output file
    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Run file", self.output.text() or "runs",
                                              "Run files (*.h5);;All files (*)")
        if path:
            self.output.setText(path)

    def output_path(self) -> Path:
        """The run file to write: the one chosen, or runs/RECIPE-DATE-TIME.h5."""
        if self.output.text().strip():
            return Path(self.output.text().strip()).expanduser()
        return Path("runs") / f"{self.recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}.h5"

    # -- the run
    def set_state(self, state: str, active: bool) -> None:
        self.state, self.active = state, active
        self.state_label.setText(state)
        self.state_label.setStyleSheet(f"font-weight: bold; color: {STATE_COLOURS.get(state, '#000')};")
        self.editor.setReadOnly(active)
        self.chooser.setEnabled(not active)
        self.output.setEnabled(not active)
        self._enable()

    def _enable(self) -> None:
        self.buttons["Start"].setEnabled(not self.active and self.recipe is not None)
        for name, allowed in controls(self.state, self.active).items():
            self.buttons[name].setEnabled(allowed)

    def show_file(self, state: str, elapsed_s: float) -> None:
        """A run file opened or followed (not this window's run): its state and how long it
        has run, per the file; nothing to control."""
        self.set_state(state, False)
        self.show_progress(None)
        self.elapsed.setText(clock(elapsed_s))

    def show_progress(self, progress: RunProgress | None) -> None:
        if progress is None:
            for label in (self.elapsed, self.remaining, self.phase):
                label.setText("–")
            self.bar.reset()
            return
        self.elapsed.setText(clock(progress.elapsed()))
        left = progress.remaining()
        self.remaining.setText("estimating…" if left is None else
                               ("at least " if left[1] else "about ") + clock(left[0]))
        self.phase.setText(progress.phase.text or "–")
        self.bar.setMaximum(max(progress.phase.total, 1))
        self.bar.setValue(min(progress.phase.done, max(progress.phase.total, 1)))
