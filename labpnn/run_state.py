"""A run's states and the transitions between them: the one table that the engine, the run
log's layout, the GUI and the tests read.

    idle -> running -> done | failed
    running -> pausing -> paused -> running      (instruments safe while paused)
    running | pausing | paused -> aborting -> idle (resumable)
    any live state -> failed

`REQUESTS` says in which states each operator request (pause, resume, abort, check) is taken;
`StateMachine` refuses a transition the table lacks, naming both states, calls its hooks on
every transition and lets a thread wait for a state instead of polling.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable

from labpnn.errors import LabpnnError


class State(enum.StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    ABORTING = "aborting"
    DONE = "done"
    FAILED = "failed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.RUNNING}),
    State.RUNNING: frozenset({State.PAUSING, State.ABORTING, State.DONE, State.FAILED}),
    State.PAUSING: frozenset({State.PAUSED, State.ABORTING, State.FAILED}),
    State.PAUSED: frozenset({State.RUNNING, State.ABORTING, State.FAILED}),
    State.ABORTING: frozenset({State.IDLE, State.FAILED}),
    State.DONE: frozenset(),
    State.FAILED: frozenset(),
}
STATES = tuple(s.value for s in State)
# states of a run under way: it may still move on, and it is not waiting to start (or aborted)
LIVE = frozenset(s for s, to in TRANSITIONS.items() if to and s is not State.IDLE)
ENDED = frozenset(s for s, to in TRANSITIONS.items() if not to)
# the states in which an operator's request is taken (the GUI enables its buttons from this)
REQUESTS: dict[str, frozenset[State]] = {
    "pause": frozenset({State.RUNNING}),
    "resume": frozenset({State.PAUSING, State.PAUSED}),
    "abort": frozenset({State.RUNNING, State.PAUSING, State.PAUSED}),
    "check": frozenset({State.RUNNING}),
}

Hook = Callable[[State, State, str], None]


class IllegalTransition(LabpnnError):
    """A transition the table does not have (a bug in the engine or a scheme)."""


class StateMachine:
    """The current state, moved only along TRANSITIONS. Hooks (old, new, reason) run on the
    moving thread, in the order added, before waiters wake."""

    def __init__(self, state: State = State.IDLE):
        self._state = state
        self._settled = state
        self._moved = False
        self._cond = threading.Condition()
        self._hooks: list[Hook] = []

    @property
    def state(self) -> State:
        return self._state

    def on_transition(self, hook: Hook) -> Callable[[], None]:
        """Call hook(old, new, reason) on every transition; returns a function that removes it."""
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook) if hook in self._hooks else None

    def move(self, new: State, reason: str = "") -> None:
        with self._cond:
            old = self._state
            if new not in TRANSITIONS[old]:
                raise IllegalTransition(f"a run cannot go from {old.value!r} to {State(new).value!r} "
                                        f"(from {old.value!r} it goes to: "
                                        f"{', '.join(sorted(s.value for s in TRANSITIONS[old])) or 'nothing'})")
            self._state = new
        for hook in list(self._hooks):
            hook(old, new, reason)
        with self._cond:
            self._settled, self._moved = new, True
            self._cond.notify_all()

    def wait_for(self, *states: State, timeout: float | None = None) -> State:
        """Block until the state (hooks done) is one of `states` or the run has ended (done,
        failed, or idle again after an abort), or until timeout; returns the state then."""
        def settled() -> bool:
            s = self._settled
            return s in states or s in ENDED or (s is State.IDLE and self._moved)

        with self._cond:
            self._cond.wait_for(settled, timeout)
            return self._settled
