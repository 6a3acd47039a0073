"""Progress of a live run from its events, Qt-free: the current phase, elapsed and remaining time.

The remaining time counts the optimisation steps (as each optimise phase announces them) and
the measured inputs still to come, at the rates
seen so far in this run (seconds per step, seconds per input); before a kind of work has been
timed it is left out and the estimate is a lower bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from labpnn.events import Event

SMOOTHING = 0.2  # weight of the newest interval in the running mean of a rate


@dataclass
class Phase:
    text: str = ""
    total: int = 0
    done: int = 0


class RunProgress:
    def __init__(self, recipe, clock=time.time):
        self.clock = clock
        self.steps = [recipe.unit_pib(i).steps for i in range(len(recipe.units))]
        d = recipe.dataset
        self.rows = {"train": d.n_train if d else 0, "test": d.n_test if d else 0}  # None: not known yet
        self.steps_done = [0] * len(self.steps)
        self.inputs_done: dict[tuple[int, str], int] = {}   # (unit, split) -> inputs passed through
        self.phase = Phase()
        self.rate: dict[str, float] = {}                     # "step" | "input" -> seconds each
        self.started: float | None = None
        self.ended: float | None = None
        self._last: tuple[float, int] | None = None          # (time, done) of the last progress event

    def apply(self, ev: Event) -> None:
        d = ev.data
        if ev.kind == "state":
            if d["state"] == "running" and self.started is None:
                self.started = ev.time
            if d["state"] in ("done", "idle", "failed"):
                self.ended = ev.time
            self._last = None  # an interval across a pause is not a rate
        elif ev.kind == "phase":
            self.phase = Phase(ev.message, int(d.get("steps", 0)), int(d.get("start", 0)))
            if d["phase"] == "optimise":   # the plan as the scheme announces it (unit None: every unit)
                for unit in range(len(self.steps)) if ev.unit is None else (ev.unit,):
                    self.steps[unit] = int(d["steps"])
            if d["phase"] == "measure":
                split = "train" if d.get("split") == "prepare" else d.get("split")
                self.rows[split] = int(d["steps"])
            self._last = None
        elif ev.kind == "step":
            self.steps_done[ev.unit] = d["step"] + 1
            self._progress("step", ev.time, d["step"] + 1)
        elif ev.kind == "measure":
            self.inputs_done[(ev.unit, d["split"])] = d["done"]
            self._progress("input", ev.time, d["done"])
        elif ev.kind in ("deployed", "accuracy") and self.phase.total == 1:
            self.phase.done = 1

    def _progress(self, kind: str, t: float, done: int) -> None:
        if self._last is not None and done > self._last[1]:
            each = (t - self._last[0]) / (done - self._last[1])
            self.rate[kind] = each if kind not in self.rate else (1 - SMOOTHING) * self.rate[kind] + SMOOTHING * each
        self._last = (t, done)
        self.phase.done = done

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or self.clock()) - self.started

    def remaining(self) -> tuple[float, bool] | None:
        """(seconds, whether it is only a lower bound), or None before anything was timed."""
        if self.ended is not None:
            return 0.0, False
        steps = sum(max(0, planned - done) for planned, done in zip(self.steps, self.steps_done))
        inputs, unknown = 0, False
        for unit in range(len(self.steps)):
            for split, passes in (("train", ("prepare", "train")), ("test", ("test",))):
                if self.rows[split] is None:
                    unknown = True
                    continue
                inputs += sum(self.rows[split] - self.inputs_done.get((unit, p), 0) for p in passes)
        seconds, timed = 0.0, False
        for kind, count in (("step", steps), ("input", inputs)):
            if kind in self.rate:
                seconds += count * self.rate[kind]
                timed = True
            elif count:
                unknown = True
        return (seconds, unknown) if timed else None
