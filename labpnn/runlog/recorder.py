"""The run log as a subscriber of the engine's events: each result is stated once, as an event,
and recorded here (state history, accuracies, fault records, the events table)."""

from __future__ import annotations

import threading

from labpnn.events import Accuracy, Episode, Event, Fault, Recovered, StateChanged
from labpnn.runlog.writer import RunLog


class RunRecorder:
    """Call with each event (a critical subscriber of the run's bus). Events may come from the
    measurement thread too (driver warnings), so writes are serialised."""

    def __init__(self, log: RunLog):
        self.log = log
        self._lock = threading.Lock()

    def __call__(self, ev: Event) -> None:
        with self._lock:
            if isinstance(ev, StateChanged):
                self.log.set_state(ev.state, ev.reason)
            elif isinstance(ev, Accuracy):
                self.log.accuracy(ev.unit, ev.revision, ev.split, ev.value, ev.what)
            elif isinstance(ev, Fault) and not ev.pending or isinstance(ev, Recovered):
                self.log.fault(ev.record())
            elif isinstance(ev, Episode):
                self.log.episode(ev.data)
            if ev.logged:
                self.log.event(ev)
