"""The engine's thread: one `Run.execute()` off the GUI thread, its events bridged to Qt."""

from __future__ import annotations

import threading
import traceback

from PySide6.QtCore import QObject, Signal

from labpnn.errors import LabpnnError
from labpnn.gui.bridge import EventBridge
from labpnn.run_state import REQUESTS
from labpnn.threads import limited


class RunWorker(QObject):
    """Runs `run.execute()` on a plain thread. Its events reach `bridge.event` (queued to the
    GUI thread); `finished(state, error)` follows the last of them: the final state's value
    ("done", "idle" after an abort, "failed") and, for a failure, what went wrong.
    Pause, resume and abort go to `run` directly (any thread may call them)."""

    finished = Signal(str, str)

    def __init__(self, run, bridge: EventBridge, parent: QObject | None = None):
        super().__init__(parent)
        self.run = run
        self.bridge = bridge
        self._thread = threading.Thread(target=self._execute, name="labpnn-engine", daemon=True)

    def start(self) -> None:
        self.bridge.attach(self.run.bus)
        self._thread.start()

    def _execute(self) -> None:
        try:
            with limited(1):  # as `labpnn run` computes by default (labpnn.threads)
                state, error = self.run.execute().value, ""
        except LabpnnError as exc:
            state, error = "failed", str(exc)
        except Exception as exc:  # a bug: reported, not lost with the thread
            traceback.print_exc()
            state, error = "failed", f"{type(exc).__name__}: {exc}"
        self.bridge.detach()
        self.finished.emit(state, error)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the engine thread; True when it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def controls(state: str, active: bool) -> dict[str, bool]:
    """Which of Pause, Resume, Abort and Check make sense in a run's state (the engine's
    run_state.REQUESTS; `state` may also be the GUI's own "starting")."""
    return {request.capitalize(): active and state in {s.value for s in states}
            for request, states in REQUESTS.items()}
