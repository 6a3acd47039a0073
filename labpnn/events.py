"""Events: what the engine tells its subscribers (run log, CLI progress, GUI bridge).

The engine emits on its own thread; subscribers must be quick and must not block
(the GUI bridge re-emits them as queued Qt signals). A subscriber that raises is
unsubscribed and reported once as a warning; it never stops the run.

Kinds and their `data` (revision r: 0 on the first pass, +1 per recovery from a fault):
- state:      {"state": "running", "reason": str}           one of engine.State
- phase:      {"phase": "optimise"|"deploy"|"measure"|"readout"|"verify", "steps": total,
               "split": "prepare"|"train"|"test"|"verify" (measure), "start": first step (optimise)}
- step:       {"step": s, "steps": total, "loss": bits, "I_XZ": bits, "I_YZ": bits, "revision": r}
- info_plane: {"step": s, "I_XZ": bits, "I_YZ": bits, "revision": r}
- deployed:   {"revision": r, "weights"|"g_target"|"g_read"|...: arrays as read back (siemens for g_*)}
- measure:    {"split": ..., "done": n, "total": N}
- accuracy:   {"split": "train"|"test", "value": 0..1, "what": "probe"|"readout"|"verify", "revision": r}
- frame:      {"frame": 2-D array, "what": the instrument names, e.g. "opu" or "slm, camera"}
- warning, fault: message says what happened and what the run does; fault data has "channels"
- info:       a message only
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = ("state", "phase", "step", "info_plane", "deployed", "measure", "accuracy", "frame",
         "warning", "fault", "info")


@dataclass(frozen=True)
class Event:
    kind: str
    message: str = ""
    unit: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"event kind {self.kind!r} is not one of {KINDS}")


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of events to subscribers, safe to subscribe/unsubscribe from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        with self._lock:
            self._subscribers.append(fn)
        return lambda: self.unsubscribe(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        with self._lock:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

    def emit(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(event)
            except Exception as exc:  # a broken listener must not break the run
                self.unsubscribe(fn)
                self.emit(Event("warning", f"event subscriber {fn!r} failed and was removed: {exc}"))
