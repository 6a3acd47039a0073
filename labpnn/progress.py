"""Progress bars for a run in a terminal: one per phase, fed by the engine's events."""

from __future__ import annotations

from tqdm import tqdm

from labpnn.events import Event, EventBus

MESSAGE_KINDS = {"accuracy", "warning", "fault", "info"}
NAMES = {"I_XZ": "I(X;Z)", "I_YZ": "I(Y;Z)", "I_Z1Z2": "I(Z1;Z2)"}  # an objective's logged quantities (bits)


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
