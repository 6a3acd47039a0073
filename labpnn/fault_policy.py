"""What a run does about a persistent fault, one strategy per `faults.on_persistent` value:
each says what the run does (the `then` of its fault events) and does it.

Faults come in three sorts (events.FaultKind): broken channels of a unit, a unit whose whole
output (or physical stage) carries no signal (the instrument itself), and, at verification, an
accuracy drop with every channel passing. `control` is the run's: pause() asks for a pause at the
next checkpoint, checkpoint() honours it (returns once the operator resumed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from labpnn.errors import AbortRequested, DeviceError


class Control(Protocol):
    def pause(self) -> None: ...

    def checkpoint(self) -> None: ...


class FaultPolicy(ABC):
    """The base: the messages every policy defines, and its actions (by default: go on)."""

    name: str
    records_at_verify = False  # a fault found by verification is recorded at once (no recovery follows)

    def unpausable(self) -> FaultPolicy:
        """The policy where the run cannot pause and measure again (a dead physical stage)."""
        return self

    @abstractmethod
    def channels_then(self, mask: bool) -> str:
        """What the run does about broken channels (`mask`: they are zeroed)."""

    @abstractmethod
    def instrument_then(self) -> str:
        """What the run does about a unit without signal."""

    @abstractmethod
    def accuracy_drop_then(self) -> str:
        """What the run does about verification's accuracy drop."""

    def after_channels(self, control: Control, index: int, channels: list[int]) -> None:
        """Broken channels recorded: go on, pause, or stop."""

    @abstractmethod
    def after_instrument(self, control: Control, message: str) -> None:
        """A unit without signal, recorded: stop (raise), or pause and return to measure again."""

    def after_accuracy_drop(self, control: Control, message: str) -> None:
        """Verification's accuracy drop, recorded: go on (retraining), pause, or stop."""


class Recover(FaultPolicy):
    name = "recover"

    def channels_then(self, mask: bool) -> str:
        return ("the run keeps them " + ("masked (zero)" if mask else "as they are")
                + " and retrains the downstream units on them")

    def instrument_then(self) -> str:
        return ("retraining cannot fix this: the run stops (failed, resumable with labpnn run --resume once "
                "the instrument is fixed)")

    def accuracy_drop_then(self) -> str:
        return "the run re-measures unit 0 and retrains every unit after it"

    def after_instrument(self, control: Control, message: str) -> None:
        raise DeviceError(message)


class Pause(FaultPolicy):
    name = "pause"

    def unpausable(self) -> FaultPolicy:
        return POLICIES["recover"]

    def channels_then(self, mask: bool) -> str:
        return "the run pauses: Resume keeps going with them, Abort stops (resumable)"

    def instrument_then(self) -> str:
        return ("the run pauses with the instruments safe: fix the instrument, then Resume (the unit is "
                "measured again) or Abort (resumable)")

    def accuracy_drop_then(self) -> str:
        return ("the run pauses: Resume re-measures unit 0 and retrains every unit after it, Abort stops "
                "(resumable)")

    def after_channels(self, control: Control, index: int, channels: list[int]) -> None:
        control.pause()

    def after_instrument(self, control: Control, message: str) -> None:
        control.pause()
        control.checkpoint()

    def after_accuracy_drop(self, control: Control, message: str) -> None:
        control.pause()


class Abort(FaultPolicy):
    name = "abort"
    records_at_verify = True

    def channels_then(self, mask: bool) -> str:
        return "the run stops (resumable with labpnn run --resume)"

    def instrument_then(self) -> str:
        return "the run stops (idle, resumable with labpnn run --resume)"

    def accuracy_drop_then(self) -> str:
        return "the run stops (resumable with labpnn run --resume)"

    def after_channels(self, control: Control, index: int, channels: list[int]) -> None:
        raise AbortRequested(f"unit {index}: broken output channels {channels}")

    def after_instrument(self, control: Control, message: str) -> None:
        raise AbortRequested(message)

    def after_accuracy_drop(self, control: Control, message: str) -> None:
        raise AbortRequested(f"verification: {message}")


POLICIES: dict[str, FaultPolicy] = {p.name: p for p in (Recover(), Pause(), Abort())}
