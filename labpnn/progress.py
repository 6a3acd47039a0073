"""Progress bars for a run in a terminal: one per phase, fed by the engine's events."""

from __future__ import annotations

from tqdm import tqdm

from labpnn.events import Event, EventBus

MESSAGE_KINDS = {"accuracy", "warning", "fault", "info"}


class Progress:
    """Subscribes to a run's events while in a `with` block."""

    def __init__(self, bus: EventBus, disable: bool = False):
        self.bus = bus
        self.disable = disable
        self.bar: tqdm | None = None
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
            self.bar = tqdm(total=ev.data["steps"], initial=ev.data.get("start", 0), desc=ev.message,
                            unit=unit, disable=self.disable, leave=False, dynamic_ncols=True)
        elif ev.kind == "step" and self.bar is not None:
            self.bar.set_postfix_str(f"I(X;Z)={ev.data['I_XZ']:.2f} bit, I(Y;Z)={ev.data['I_YZ']:.2f} bit",
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
