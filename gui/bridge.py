"""The bridge from a Qt-free event bus to the GUI thread."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, Signal

from labpnn.events import Event, EventBus


class EventBridge(QObject):
    """Re-emits every event of a bus as `event`, a signal that is safe to emit from the
    engine's thread: slots connected through `connect` run later, on the GUI thread."""

    event = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._detach: Callable[[], None] | None = None

    def subscribe(self, slot: Callable[[Event], None]) -> None:
        self.event.connect(slot, Qt.ConnectionType.QueuedConnection)

    def attach(self, bus: EventBus) -> None:
        """Follow `bus` (and stop following the previous one)."""
        self.detach()
        self._detach = bus.subscribe(self.event.emit)

    def detach(self) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None
