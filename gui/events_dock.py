"""The events log (time, kind, unit, message), filterable by kind, and the fault banner."""

from __future__ import annotations

import html
import time

from PySide6.QtCore import QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QComboBox, QDockWidget, QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy,
                               QTableView, QToolBar)

from labpnn.gui.dock_body import set_body
from labpnn.gui.run_data import LISTED_KINDS, RunData
from labpnn.gui.run_worker import controls

KIND_COLOURS = {"warning": QColor("#e65100"), "fault": QColor("#c62828")}
COLUMNS = ("time", "kind", "unit", "message")


class EventsDock(QDockWidget):
    sections = {"log"}  # what of RunData it draws

    def __init__(self, parent=None):
        super().__init__("Events", parent)
        self.setObjectName("events")
        self.model = QStandardItemModel(0, len(COLUMNS))
        self.model.setHorizontalHeaderLabels(COLUMNS)
        self.proxy = QSortFilterProxyModel()
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterKeyColumn(COLUMNS.index("kind"))
        self.kind = QComboBox()
        self.kind.addItem("all kinds", "")
        for kind in LISTED_KINDS:
            self.kind.addItem(kind, kind)
        self.kind.currentIndexChanged.connect(self._filter)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(False)
        self.table.setEditTriggers(QTableView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        header = self.table.horizontalHeader()
        for col, sample in enumerate(("00:00:00", "accuracy", "unit")):
            header.resizeSection(col, self.table.fontMetrics().horizontalAdvance(sample) + 16)
        header.setStretchLastSection(True)
        head = QHBoxLayout()
        head.addWidget(QLabel("Show:"))
        head.addWidget(self.kind)
        head.addStretch(1)
        set_body(self, head, self.table, stretch=self.table)

    def _filter(self) -> None:
        kind = self.kind.currentData()
        self.proxy.setFilterRegularExpression(f"^{kind}$" if kind else "")

    def clear(self) -> None:
        self.model.removeRows(0, self.model.rowCount())

    def render(self, data: RunData) -> None:
        """Append the rows not shown yet."""
        at_end = self.table.verticalScrollBar().value() == self.table.verticalScrollBar().maximum()
        for row in data.log[self.model.rowCount():]:
            cells = [QStandardItem(time.strftime("%H:%M:%S", time.localtime(row.time))),
                     QStandardItem(row.kind),
                     QStandardItem("" if row.unit is None else str(row.unit)),
                     QStandardItem(row.message)]
            cells[3].setToolTip(row.message)
            if row.kind in KIND_COLOURS:
                for cell in cells:
                    cell.setForeground(KIND_COLOURS[row.kind])
            self.model.appendRow(cells)
        if at_end:
            self.table.scrollToBottom()


class FaultBanner(QToolBar):
    """A red strip across the top of the window: the fault's message (which says what the
    operator can do) and the run controls."""

    pause = Signal()
    resume = Signal()
    abort = Signal()

    def __init__(self, parent=None):
        super().__init__("Fault", parent)
        self.setObjectName("fault_banner")
        self.setMovable(False)
        self.setFloatable(False)
        frame = QFrame()
        frame.setObjectName("fault_frame")
        frame.setStyleSheet("#fault_frame { background: #fdecea; border: 2px solid #c62828; border-radius: 4px; }"
                            "#fault_frame QLabel { color: #7f0000; }")
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.buttons = {}
        layout = QHBoxLayout(frame)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.addWidget(self.message, 1)
        for name, signal in (("Pause", self.pause), ("Resume", self.resume), ("Abort", self.abort),
                             ("Dismiss", None)):
            button = QPushButton(name)
            button.clicked.connect(lambda _=False, s=signal: s.emit() if s is not None else self.hide())
            layout.addWidget(button)
            self.buttons[name] = button
        frame.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.addWidget(frame)
        self.hide()

    def show_fault(self, message: str, unit: int | None) -> None:
        where = "" if unit is None else f" (unit {unit})"
        self.message.setText(f"<b>Fault{where}:</b> {html.escape(message)}")
        self.show()

    def set_run_state(self, state: str, active: bool) -> None:
        allowed = controls(state, active)
        for name, button in self.buttons.items():
            if name in allowed:
                button.setEnabled(allowed[name])
