"""Progress in a terminal redraws bars in place; into a file or a pipe it writes lines."""

from __future__ import annotations

import io

from labpnn.events import EventBus, Measured, PhaseStarted, Step
from labpnn.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(stream) -> str:
    bus = EventBus()
    with Progress(bus, stream=stream):
        bus.emit(PhaseStarted(unit=0, phase="optimise", steps=3, what="PIB"))
        for i in range(3):
            bus.emit(Step(unit=0, step=i, steps=3, loss=-1.0, values={"I_XZ": 1.0, "I_YZ": 0.5}))
        bus.emit(PhaseStarted(unit=0, phase="measure", steps=10, split="train"))
        bus.emit(Measured(unit=0, split="train", done=10, total=10))
    return stream.getvalue()


def test_a_log_file_gets_lines_without_redraws():
    text = feed(io.StringIO())
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "[phase] unit 0: PIB optimisation, 3 steps"
    assert lines[1].startswith("[phase] unit 0: PIB optimisation, 3 steps: done in ") and lines[1].endswith(" s")
    assert lines[2] == "[phase] unit 0: measuring train (10 inputs)" and len(lines) == 4


def test_a_terminal_gets_bars_redrawn_in_place():
    assert "\r" in feed(Terminal())
