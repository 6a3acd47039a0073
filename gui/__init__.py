"""The bench GUI (PySide6 + pyqtgraph): a subscriber to the engine and a reader of its run files."""
