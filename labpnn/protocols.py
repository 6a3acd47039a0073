"""The capabilities the engine works through, as runtime-checkable protocols.

Instruments (drivers and twins alike) implement `Device` plus one capability each;
units implement `Unit`. The engine checks these with isinstance() where it uses them
and never imports a concrete driver. The engine's two extension points: an `Objective`
(what one unit minimises) and a `Scheme` (who trains when and where); docs/engine.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # torch only for the annotations: importing a twin must stay light
    import torch

    from labpnn.run_context import RunContext


@dataclass(frozen=True)
class Health:
    """Result of a self-test: ok, the instrument's code (0 when healthy) and a sentence."""

    ok: bool
    code: int = 0
    detail: str = ""


@runtime_checkable
class Device(Protocol):
    """One instrument or its twin. Constructed from the bench as
    `Cls(name=..., resource=..., **options)` without touching hardware; `connect()` opens it.
    Every public method holds the instrument's own lock (one owner per instrument)."""

    name: str
    simulated: bool

    @property
    def connected(self) -> bool: ...

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Device: ...

    def __exit__(self, *exc: object) -> None: ...

    def identity(self) -> str:
        """The instrument's identity string (*IDN? for SCPI instruments)."""
        ...

    def reset(self) -> None: ...

    def safe_state(self) -> None:
        """Outputs off. Called on abort, error and exit; must not raise for a lost link."""
        ...

    def self_test(self) -> Health: ...

    def snapshot(self) -> dict[str, Any]:
        """JSON-able settings and identity, stored in every run file (provenance)."""
        ...


@runtime_checkable
class CrossbarArray(Device, Protocol):
    """A memristor crossbar doing analog matrix-vector products in memory."""

    array_shape: tuple[int, int]
    deployment_id: int  # changes whenever the array is reprogrammed or reset

    def program_weights(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Program signed weights (in_features, out_features) as differential conductance
        pairs scaled to the conductance range, tiling as needed. Returns what was read back:
        `weights` (effective signed weights, same shape), `g_target` and `g_read`
        (the logical conductance map [G+ | G-], shape (in_features, 2*out_features), siemens)."""
        ...

    def read_weights(self) -> dict[str, np.ndarray]:
        """Read back the programmed state; same keys and shapes as program_weights returns."""
        ...

    def conductance_range(self) -> tuple[float, float]:
        """(g_min, g_max) of the conductances in use, siemens."""
        ...

    def matmul(self, x: np.ndarray, format: str = "float32") -> np.ndarray:
        """x (n, in_features) -> (n, out_features) ~ x @ weights, through the hardware
        (inputs encoded as read voltages, outputs decoded from ADC currents), float32;
        `format` "codes" sends them as the board's DAC and ADC codes instead."""
        ...


@runtime_checkable
class Projector(Device, Protocol):
    """A fixed physical random projection: an OPU, or an SLM + scattering medium + camera."""

    n_inputs: int
    n_outputs: int
    last_frame: np.ndarray | None  # the last camera frame / OPU output as a 2-D image (GUI)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Binary uint8 input (n, n_inputs) -> measured intensities (n, n_outputs), float32."""
        ...


@runtime_checkable
class FaultInjectable(Protocol):
    """Twins only: switch a fault on mid-run (the fault recipes use this)."""

    def inject_fault(self, kind: str, **params: Any) -> None: ...

    def check_fault(self, kind: str, **params: Any) -> None:
        """ValueError or TypeError when inject_fault(kind, **params) would refuse it: an
        unknown kind, a parameter it does not take or out of range. Changes nothing."""
        ...

    def clear_faults(self) -> None: ...


@runtime_checkable
class Replaying(Protocol):
    """An instrument serving a recorded run (bench driver `replay`): the engine has it check
    the recipe against the recorded one before anything runs."""

    replay_of: str

    def check_recipe(self, recipe) -> None:
        """Raise ConfigError naming what the recording lacks for this recipe."""
        ...


@runtime_checkable
class Unit(Protocol):
    """One trainable block of the deep PNN: instruments plus their digital part.

    Optimisation sees `model()` applied to `prepare(h)`; the hardware is the truth
    through `deploy()` and `measure(h)`."""

    name: str
    in_features: int
    out_features: int

    def instruments(self) -> list[Device]: ...

    def prepare(self, h: np.ndarray) -> np.ndarray:
        """Measure the parameter-free physical stage (identity for a crossbar, the optical
        projection for a scattering unit); the model's input during optimisation."""
        ...

    def model(self):  # -> torch.nn.Module
        """The differentiable stand-in whose parameters PIB trains; maps prepare(h) -> z."""
        ...

    def deployed_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the arrays deploy() and read_back() return (the run log pre-allocates)."""
        ...

    def deploy(self) -> dict[str, np.ndarray]:
        """Put the model's current parameters on the hardware; return them as read back."""
        ...

    def read_back(self) -> dict[str, np.ndarray]:
        """Read the deployed state from the hardware without changing it."""
        ...

    def matches(self, expected: dict[str, np.ndarray]) -> bool:
        """Whether the hardware still holds `expected` (a deploy() result) within tolerance."""
        ...

    def measure(self, h: np.ndarray) -> np.ndarray:
        """The full physical forward (n, in_features) -> (n, out_features), float32."""
        ...

    def expected(self, h: np.ndarray) -> np.ndarray | None:
        """What the model predicts measure(h) to be, without touching hardware; None when the
        physical stage must be measured to know (the health checks then use history only)."""
        ...

    @property
    def last_frame(self) -> np.ndarray | None:
        """The 2-D image its instruments saw last (a camera frame, an OPU output), for the
        GUI; None for units without one."""
        ...


@dataclass(frozen=True)
class Batch:
    """One minibatch for one unit.
    x: the global network input rows (float32, flattened), h: the unit's measured input rows (what
    model() takes), targets: named tensors the objective needs:
      "y" integer labels (supervised); "x2", "h2" a second augmented view (unsupervised);
      "action", "reward", "steps", "h_next", "done" (TD learning)."""

    x: torch.Tensor
    h: torch.Tensor
    targets: Mapping[str, torch.Tensor]


@runtime_checkable
class Objective(Protocol):
    """What one unit minimises on a batch (layer-local: no gradient crosses units)."""

    name: str
    needs: frozenset[str]  # the target names its loss reads, e.g. {"y"}

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """Its own trainable digital parts (a local head, ...), optimised with the unit's model;
        may be empty."""
        ...

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar to minimise and the quantities to log, e.g. {"I_XZ": bits, "I_YZ": bits}."""
        ...


@runtime_checkable
class Scheme(Protocol):
    """Who trains when and where: the order in which units are optimised, deployed and
    measured, written against a RunContext only."""

    name: str

    def run(self, ctx: RunContext) -> None: ...


@runtime_checkable
class DescribesArrays(Protocol):
    """A unit that says what its recorded arrays hold (optional; the run log writes it as
    attributes of the arrays)."""

    def array_attrs(self) -> dict[str, dict[str, str]]:
        """{"trained/<name>" or "deployed/<name>": {attribute: text}}, e.g. units and axes."""
        ...
