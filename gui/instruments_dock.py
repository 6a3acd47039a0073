"""Instruments: each instrument of the bench with its identity, connection, settings and health.

Every instrument call runs on that instrument's own worker thread (DeviceCalls): a twin
answers at once, a real board may take seconds, and the window never waits for it.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QDockWidget, QGridLayout, QLabel, QPushButton, QTreeWidget, QTreeWidgetItem

from labpnn.gui.dock_body import set_body
from labpnn.gui.device_calls import DeviceCalls
from labpnn.protocols import Device, Health

LIGHTS = {"unknown": "#9e9e9e", "ok": "#2e7d32", "fault": "#c62828", "busy": "#f9a825"}
MAX_ITEMS = 8      # longer lists in a snapshot are summarised
MAX_TEXT = 60


def light(colour: str) -> QIcon:
    pixmap = QPixmap(14, 14)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(QColor(colour))
    painter.setPen(QColor(colour).darker(140))
    painter.drawEllipse(1, 1, 12, 12)
    painter.end()
    return QIcon(pixmap)


def short(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) > MAX_ITEMS:
        return f"[{len(value)} values]"
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def add_settings(parent: QTreeWidgetItem, snapshot: dict[str, Any]) -> None:
    """The snapshot under `parent`: scalars as rows, nested mappings as collapsed branches."""
    for key, value in snapshot.items():
        if isinstance(value, dict):
            add_settings(QTreeWidgetItem(parent, [str(key), f"{len(value)} settings" if value else "none"]), value)
        elif key not in ("identity", "name", "simulated"):  # shown in the instrument's row
            child = QTreeWidgetItem(parent, [str(key), short(value)])
            child.setToolTip(1, str(value))


def inspect(device: Device, action: str) -> dict[str, Any]:
    """Do `action` to the device, then read what the dock shows (runs on the device's thread)."""
    if action == "connect":
        device.connect()
    elif action == "disconnect":
        device.safe_state()
        device.close()
    elif action == "reset":
        device.reset()
    elif action == "safe state":
        device.safe_state()
    found: dict[str, Any] = {"connected": device.connected}
    if device.connected:
        found["identity"] = device.identity()
        if action in ("connect", "self-test"):
            found["health"] = device.self_test()
    found["snapshot"] = device.snapshot()
    return found


class InstrumentsDock(QDockWidget):
    ACTIONS = ("connect", "disconnect", "reset", "safe state", "self-test", "refresh")

    def __init__(self, devices: dict[str, Device], parent=None, error: str = ""):
        super().__init__("Instruments", parent)
        self.setObjectName("instruments")
        self.devices = devices
        self.calls = DeviceCalls(list(devices), self)
        self.calls.done.connect(self._done)
        self.run_active = False
        self.health: dict[str, Health | None] = dict.fromkeys(devices)
        self.found: dict[str, dict[str, Any]] = {name: {} for name in devices}  # the last inspect() of each
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Instrument", "Value"])
        self.tree.setColumnWidth(0, 170)
        self.tree.currentItemChanged.connect(lambda *_: self._enable())
        self.items: dict[str, QTreeWidgetItem] = {}
        for name, device in devices.items():
            item = QTreeWidgetItem(self.tree, [name, ""])
            item.setData(0, Qt.ItemDataRole.UserRole, name)
            font = item.font(0)
            font.setBold(True)
            item.setFont(0, font)
            self.items[name] = item
            self._show(name)
        self.error = QLabel(error)
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #c62828;")
        self.error.setVisible(bool(error))
        self.buttons: dict[str, QPushButton] = {}
        grid = QGridLayout()
        for i, action in enumerate(self.ACTIONS):
            button = QPushButton(action.capitalize())
            button.clicked.connect(lambda _=False, a=action: self.request(a))
            grid.addWidget(button, i // 3, i % 3)
            self.buttons[action] = button
        self.buttons["safe state"].setToolTip("outputs off (always allowed, even during a run)")
        set_body(self, self.error, self.tree, grid, stretch=self.tree)
        if self.items:
            self.tree.setCurrentItem(next(iter(self.items.values())))
        for name in devices:
            self.request("refresh", name)

    def selected(self) -> str | None:
        item = self.tree.currentItem()
        while item is not None and item.parent() is not None:
            item = item.parent()
        return None if item is None else item.data(0, Qt.ItemDataRole.UserRole)

    def request(self, action: str, name: str | None = None) -> None:
        name = name or self.selected()
        if name is None:
            return
        device = self.devices[name]
        self.calls.submit(name, action, lambda: inspect(device, action))
        self.items[name].setIcon(0, light(LIGHTS["busy"]))
        self.items[name].setText(1, f"{action}…")
        self._enable()

    def set_run_active(self, active: bool) -> None:
        """While the engine drives the instruments, only safe state and refresh are offered."""
        self.run_active = active
        self._enable()

    def _enable(self) -> None:
        name = self.selected()
        free = name is not None and not self.calls.busy(name)
        connected = name is not None and bool(self.found[name].get("connected"))
        allowed = {"connect": not connected, "disconnect": connected, "reset": connected,
                   "safe state": True, "self-test": connected, "refresh": True}
        for action, button in self.buttons.items():
            busy_ok = action == "safe state" or free
            run_ok = not self.run_active or action in ("safe state", "refresh")
            button.setEnabled(name is not None and allowed[action] and busy_ok and run_ok)

    def _done(self, name: str, action: str, found: Any, error: str) -> None:
        if error:
            self.health[name] = Health(False, -1, f"{action} failed: {error}")
        else:
            self.found[name] = found
            if "health" in found:
                self.health[name] = found["health"]
            elif action in ("disconnect", "reset"):
                self.health[name] = None  # not known until the next self-test
        if not self.calls.busy(name):
            self._show(name)
        self._enable()

    def refresh_all(self) -> None:
        """Re-read every instrument that is not busy (e.g. after the engine connected them)."""
        for name in self.devices:
            if not self.calls.busy(name):
                self.request("refresh", name)

    def _show(self, name: str) -> None:
        item = self.items[name]
        device = self.devices[name]
        found = self.found[name]
        health = self.health[name]
        colour = "unknown" if health is None else ("ok" if health.ok else "fault")
        item.setIcon(0, light(LIGHTS[colour]))
        status = ["simulated" if device.simulated else "real",
                  "connected" if found.get("connected") else "disconnected"]
        if health is not None:
            status.append("healthy" if health.ok else f"fault {health.code}")
        item.setText(1, " · ".join(status))
        item.setToolTip(1, health.detail if health else "not self-tested yet")
        expanded = item.isExpanded() or not item.childCount()
        item.takeChildren()
        QTreeWidgetItem(item, ["identity", found.get("identity", "(connect to read)")])
        if health is not None:
            row = QTreeWidgetItem(item, ["health", health.detail or ("ok" if health.ok else f"code {health.code}")])
            row.setToolTip(1, row.text(1))
            if not health.ok:
                row.setForeground(1, QColor(LIGHTS["fault"]))
        add_settings(item, found.get("snapshot", {}))
        item.setExpanded(expanded)

    def shutdown(self) -> None:
        self.calls.shutdown()
