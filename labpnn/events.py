"""Events: what the engine tells its subscribers (the run log, CLI progress, the GUI bridge).

One dataclass per kind, with structured fields; `message` is the English sentence the events
log shows, made from those fields, and `data` the fields as a dict (what the GUI reads). Tests
and programs read the fields, never the sentence. Kinds (revision r: 0 on the first pass, +1
per recovery from a fault):

- StateChanged (state):  state (one of labpnn.run_state.State), reason
- PhaseStarted (phase):  phase ("optimise"|"deploy"|"measure"|"readout"|"verify"), steps (total),
                         split ("prepare"|"train"|"test"|"verify", measure), start (first step, optimise)
- Step (step):           step, steps, loss, revision, and the objective's values (bits), e.g. I_XZ, I_YZ
- InfoPlane (info_plane): step, I_XZ, I_YZ (bits), revision; objectives that log both
- Episode (episode):     episode, return, length, epsilon, env_steps, learner_steps, average, losses (RL)
- Deployed (deployed):   revision, arrays as read back ("weights", "g_target", "g_read" in siemens, ...)
- Measured (measure):    split, done, total (inputs)
- Accuracy (accuracy):   split ("train"|"test"), value (0..1), what ("probe"|"readout"|"verify"|"linear"), revision
- Frame (frame):         frame (2-D array), what (the instrument names, e.g. "opu" or "slm, camera")
- Fault (fault):         fault (FaultKind), channels, split, action (the policy), diagnoses (channel:
                         health.Diagnosis), detail (what was found), then (what the run does)
- Recovered (info):      fault, channels, accuracy_before/after_fault/recovered: a fault's outcome
- WarningEvent, InfoEvent: text

The engine emits on its own thread (and driver warnings on the measurement thread); subscribers
must be quick and must not block (the GUI bridge re-emits them as queued Qt signals). A subscriber
that raises is unsubscribed and reported once as a warning; it never stops the run, except a
critical one (the run log), whose errors are the run's.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


class Kind(enum.StrEnum):
    STATE = "state"
    PHASE = "phase"
    STEP = "step"
    INFO_PLANE = "info_plane"
    DEPLOYED = "deployed"
    MEASURE = "measure"
    ACCURACY = "accuracy"
    FRAME = "frame"
    WARNING = "warning"
    FAULT = "fault"
    INFO = "info"
    EPISODE = "episode"


KINDS = tuple(k.value for k in Kind)


class FaultKind(enum.StrEnum):
    """What a fault record is about (the run file's faults/kind)."""
    BROKEN_CHANNELS = "broken_channels"   # some output channels fail the health checks
    INSTRUMENT = "instrument"             # a whole unit without signal: the instrument itself
    ACCURACY_DROP = "accuracy_drop"       # verification: accuracy fell, every channel passing


@dataclass(frozen=True, kw_only=True)
class Event:
    """What every event has. Subclasses set `kind`, and `logged` (kept in the run file's events
    table) for the kinds an operator reads later."""

    kind: ClassVar[Kind]
    logged: ClassVar[bool] = True
    unit: int | None = None
    time: float = field(default_factory=time.time)

    @property
    def message(self) -> str:
        return ""

    @property
    def data(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("unit", "time")}


def _about(unit: int | None) -> str:
    return "" if unit is None else f"unit {unit}: "


@dataclass(frozen=True, kw_only=True)
class StateChanged(Event):
    kind = Kind.STATE
    state: str
    reason: str = ""

    @property
    def message(self) -> str:
        return f"{self.state}{': ' + self.reason if self.reason else ''}"


@dataclass(frozen=True, kw_only=True)
class PhaseStarted(Event):
    kind = Kind.PHASE
    phase: str
    steps: int
    split: str | None = None
    start: int = 0
    what: str = ""           # optimise: the objective; deploy: the instruments

    @property
    def message(self) -> str:
        if self.phase == "optimise":
            return f"{_about(self.unit)}{self.what} optimisation, {self.steps} steps"
        if self.phase == "deploy":
            return f"{_about(self.unit)}deploying to {self.what}"
        if self.phase == "measure":
            return f"{_about(self.unit)}measuring {self.split} ({self.steps} inputs)"
        if self.phase == "verify":
            return "verifying the deployed network on the hardware (test set)"
        return "digital readout"


@dataclass(frozen=True, kw_only=True)
class Step(Event):
    kind = Kind.STEP
    logged = False
    step: int
    steps: int
    loss: float
    values: Mapping[str, float] = field(default_factory=dict)
    revision: int = 0

    @property
    def data(self) -> dict[str, Any]:
        return {"step": self.step, "steps": self.steps, "loss": self.loss, "revision": self.revision,
                **self.values}


@dataclass(frozen=True, kw_only=True)
class Episode(Event):
    """One finished RL episode (scheme online); `average` over the last `window` episodes,
    `losses` each unit's mean loss over the episode's optimisation steps (NaN before learning)."""

    kind = Kind.EPISODE
    logged = False  # the run file's episodes table holds it
    episode: int
    total: float  # the return: rewards summed over the episode
    length: int
    epsilon: float
    env_steps: int
    learner_steps: int
    average: float
    losses: tuple[float, ...] = ()

    @property
    def data(self) -> dict[str, Any]:
        return {"episode": self.episode, "return": self.total, "length": self.length, "epsilon": self.epsilon,
                "env_steps": self.env_steps, "learner_steps": self.learner_steps, "average": self.average,
                "losses": list(self.losses)}


@dataclass(frozen=True, kw_only=True)
class InfoPlane(Event):
    kind = Kind.INFO_PLANE
    logged = False
    step: int
    I_XZ: float  # noqa: N815 (the quantities' names)
    I_YZ: float  # noqa: N815
    revision: int = 0


@dataclass(frozen=True, kw_only=True)
class Deployed(Event):
    kind = Kind.DEPLOYED
    revision: int
    arrays: Mapping[str, Any]

    @property
    def message(self) -> str:
        return f"{_about(self.unit)}deployed and read back"

    @property
    def data(self) -> dict[str, Any]:
        return {"revision": self.revision, **self.arrays}


@dataclass(frozen=True, kw_only=True)
class Measured(Event):
    kind = Kind.MEASURE
    logged = False
    split: str
    done: int
    total: int


@dataclass(frozen=True, kw_only=True)
class Accuracy(Event):
    kind = Kind.ACCURACY
    split: str
    value: float
    what: str
    revision: int = 0

    @property
    def message(self) -> str:
        if self.what == "probe":
            return f"unit {self.unit} linear probe, {self.split}: {100 * self.value:.1f} %"
        if self.what == "linear":
            return f"unit {self.unit} linear evaluation (logistic regression), {self.split}: {100 * self.value:.1f} %"
        if self.what == "verify":
            return f"verification on the hardware, {self.split}: {100 * self.value:.2f} %"
        return f"readout accuracy, {self.split}: {100 * self.value:.2f} %"


@dataclass(frozen=True, kw_only=True)
class Frame(Event):
    kind = Kind.FRAME
    logged = False
    frame: Any
    what: str


@dataclass(frozen=True, kw_only=True)
class Fault(Event):
    """A fault found. `pending`: its record in the run file's faults section waits for the
    outcome (a Recovered event); otherwise the run log records it with this event."""

    kind = Kind.FAULT
    fault: FaultKind
    channels: tuple[int, ...] = ()
    split: str | None = None
    action: str = ""
    diagnoses: Mapping[int, str] = field(default_factory=dict)   # channel -> health.Diagnosis
    reasons: Mapping[int, str] = field(default_factory=dict)     # channel -> the full diagnosis
    detail: str = ""
    then: str = ""
    accuracy_before: float | None = None
    accuracy_after_fault: float | None = None
    pending: bool = False

    @property
    def message(self) -> str:
        return f"{self.detail}; {self.then}" if self.then else self.detail

    def record(self) -> dict[str, Any]:
        """The entry of the run file's faults section."""
        rec = {"kind": self.fault.value, "unit": self.unit, "channels": list(self.channels),
               "split": self.split, "action": self.action, "message": self.detail,
               "accuracy_before": self.accuracy_before, "accuracy_after_fault": self.accuracy_after_fault}
        if self.reasons:
            rec["reasons"] = {str(c): r for c, r in sorted(self.reasons.items())}
            rec["diagnoses"] = {str(c): str(d) for c, d in sorted(self.diagnoses.items())}
        return rec


@dataclass(frozen=True, kw_only=True)
class Recovered(Event):
    """A fault's outcome: the downstream units retrained; the run log records the fault with it."""

    kind = Kind.INFO
    fault: FaultKind
    channels: tuple[int, ...]
    action: str
    detail: str
    accuracy_before: float
    accuracy_after_fault: float
    accuracy_recovered: float

    @property
    def message(self) -> str:
        return (f"recovered from the fault in unit {self.unit}: test accuracy {100 * self.accuracy_before:.1f} % "
                f"before, {100 * self.accuracy_after_fault:.1f} % after the fault, "
                f"{100 * self.accuracy_recovered:.1f} % after retraining the downstream units")

    def record(self) -> dict[str, Any]:
        return {"kind": self.fault.value, "unit": self.unit, "channels": list(self.channels),
                "accuracy_before": self.accuracy_before, "accuracy_after_fault": self.accuracy_after_fault,
                "accuracy_recovered": self.accuracy_recovered, "time": self.time, "action": self.action,
                "message": self.detail}


@dataclass(frozen=True, kw_only=True)
class WarningEvent(Event):
    kind = Kind.WARNING
    text: str

    @property
    def message(self) -> str:
        return self.text


@dataclass(frozen=True, kw_only=True)
class InfoEvent(Event):
    kind = Kind.INFO
    text: str

    @property
    def message(self) -> str:
        return self.text


EVENTS = (StateChanged, PhaseStarted, Step, InfoPlane, Deployed, Measured, Accuracy, Frame, Fault, Recovered,
          WarningEvent, InfoEvent)
# the kinds the run log keeps in its events table; the others arrive many times a second
LOGGED_KINDS = frozenset(cls.kind for cls in EVENTS if cls.logged)

Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of events to subscribers, safe to subscribe/unsubscribe from any thread.
    Critical subscribers (the run log) are called first, and what they raise is raised."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subscribers: list[tuple[Subscriber, bool]] = []

    def subscribe(self, fn: Subscriber, *, critical: bool = False) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        with self._lock:
            if critical:
                self._subscribers.insert(0, (fn, True))
            else:
                self._subscribers.append((fn, False))
        return lambda: self.unsubscribe(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s[0] is not fn]

    def emit(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for fn, critical in subscribers:
            if critical:
                fn(event)
                continue
            try:
                fn(event)
            except Exception as exc:  # a broken listener must not break the run
                self.unsubscribe(fn)
                self.emit(WarningEvent(text=f"event subscriber {fn!r} failed and was removed: {exc}"))
