"""The one way a dock lays out its content."""

from __future__ import annotations

from PySide6.QtWidgets import QDockWidget, QLayout, QVBoxLayout, QWidget


def set_body(dock: QDockWidget, *parts: QWidget | QLayout, stretch: QWidget | None = None) -> None:
    """parts (widgets or layouts) top to bottom, 4 px margins, as the dock's widget; the part
    given as `stretch` takes the spare height."""
    body = QWidget()
    layout = QVBoxLayout(body)
    layout.setContentsMargins(4, 4, 4, 4)
    for part in parts:
        if isinstance(part, QLayout):
            layout.addLayout(part)
        else:
            layout.addWidget(part, 1 if part is stretch else 0)
    dock.setWidget(body)
