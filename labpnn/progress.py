"""Progress bars for a run in a terminal: one per phase, fed by the engine's events. Written
to a file or a pipe (not a TTY), a phase is one line when it starts and one when it ends:
no carriage-return redraws in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from labpnn.events import Event, EventBus

MESSAGE_KINDS = {"accuracy", "warning", "fault", "info"}
NAMES = {"I_XZ": "I(X;Z)", "I_YZ": "I(Y;Z)", "I_Z1Z2": "I(Z1;Z2)"}  # an objective's logged quantities (bits)


class Progress:
    """Subscribes to a run's events while in a `with` block."""

    def __init__(self, bus: EventBus, disable: bool = False, stream: TextIO | None = None):
        self.bus = bus
        self.disable = disable
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())  # redraw bars in place
        self.bar: tqdm | None = None
        self._phase: tuple[str, float] | None = None  # not live: the phase being run, since when
        self._unsubscribe = None

    def __enter__(self) -> Progress:
        self._unsubscribe = self.bus.subscribe(self)
        return self

    def __exit__(self, *exc) -> None:
        self._unsubscribe()
        self._close()

    def __call__(self, ev: Event) -> None:
        if ev.kind == "phase":
            self._close()
            unit = {"optimise": "step", "measure": "input"}.get(ev.data["phase"], "it")
            if not self.live:
                if not self.disable:
                    print(f"[phase] {ev.message}", file=self.stream, flush=True)
                    self._phase = (ev.message, time.monotonic())
                return
            self.bar = tqdm(total=ev.data["steps"], initial=ev.data.get("start", 0), desc=ev.message,
                            unit=unit, disable=self.disable, leave=False, dynamic_ncols=True,
                            file=self.stream)
        elif ev.kind == "step" and self.bar is not None:
            values = {k: v for k, v in ev.data.items() if k.startswith("I_")}
            self.bar.set_postfix_str(", ".join(f"{NAMES.get(k, k)}={v:.2f} bit" for k, v in values.items()),
                                     refresh=False)
            self.bar.update(1)
        elif ev.kind == "measure" and self.bar is not None:
            self.bar.update(ev.data["done"] - self.bar.n)
        elif ev.kind in MESSAGE_KINDS and not self.disable:
            tqdm.write(f"[{ev.kind}] {ev.message}")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._phase is not None:
            message, started = self._phase
            print(f"[phase] {message}: done in {time.monotonic() - started:.1f} s", file=self.stream, flush=True)
            self._phase = None
