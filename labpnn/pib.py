"""The Physical Information Bottleneck (PIB) terms, the optimiser settings, and the generic
unit-wise optimiser that minimises any Objective (labpnn.objectives).

A unit's output Z is trained to keep what it says about the labels Y and to forget
the rest of the network input X: maximise I(Y;Z) - beta * I(X;Z), estimated per
minibatch with the matrix-based Renyi entropy of labpnn.info (bits).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labpnn import info, state_image
from labpnn.protocols import Batch, Objective

__all__ = ["PIBSettings", "PIBTerms", "StepRecord", "UnitOptimiser", "check_index", "pib_terms",
           "resolve_device"]


class PIBTerms(NamedTuple):
    """Scalar tensors of one PIB evaluation (bits); loss = -objective is what to minimise."""

    objective: torch.Tensor
    loss: torch.Tensor
    i_xz: torch.Tensor
    i_yz: torch.Tensor


def pib_terms(x, y, z, *, beta: float, alpha: float = 1.01, sigma_x=None,
              sigma_z=None, estimator: str = "exact", width_x: info.Width | None = None,
              width_z: info.Width | None = None) -> PIBTerms:
    """objective = I(Y;Z) - beta * I(X;Z) for inputs x (n, ...), integer labels y (n,) and
    features z (n, ...), differentiable in z. Kernel widths: sigma_x, sigma_z when given, else
    by the rules width_x, width_z (info.Width; "class" reads y), else info.default_sigma;
    estimator "exact" or "fast" as in info.entropy.

    S(Z) is computed once for both terms; S(X) and S(Y) do not depend on z and are
    computed without gradient.
    """
    b = float(beta)
    if not (math.isfinite(b) and b >= 0):
        raise ValueError(f"beta: must be finite and >= 0, got {beta!r}")
    a = info._check_alpha(alpha)
    e = info._check_estimator(estimator)
    yt = info._labels(y, "y")
    zt = info._samples(z, "z")
    with torch.no_grad():
        info._same_n(info._tensor(x, "x"), yt, "x", "y")
        a_x, _ = info._kernel(x, sigma_x, "x", width_x, yt)
        a_x, yt = a_x.to(zt.device), yt.to(zt.device)
        info._same_n(a_x, zt, "x", "z")
        s_y = info.label_entropy(yt, a).to(zt.dtype)
    a_z = info._gaussian(zt, sigma_z, "sigma_z", width_z, yt)  # unnormalised: entropies are scale-free
    s_x, s_z, s_xz = info._mi_entropies(a_x.to(a_z.dtype), a_z, a, e)  # S(X): no gradient
    i_xz = s_x + s_z - s_xz
    i_yz = s_y + s_z - info._label_joint(a_z, yt, a, e)
    objective = i_yz - b * i_xz
    return PIBTerms(objective, -objective, i_xz, i_yz)


class PIBSettings(BaseModel):
    """How one unit is optimised (a recipe's `pib` section): the optimiser's settings, and the
    PIB terms' (alpha, beta, sigma_*), which other objectives may also read."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.01, gt=0, description="Renyi order; 2 is the fast eigen-free path")
    beta: float = Field(0.01, ge=0, description="weight of the compression term I(X;Z)")
    sigma_x: float | None = Field(None, gt=0, description="kernel width of X; None: median rule")
    sigma_z: float | None = Field(None, gt=0, description="kernel width of Z; None: median rule")
    width_x: Literal["median", "class", "knn"] = Field(
        "median", description="rule for X's kernel width when sigma_x is not given (docs/pib-tuning.md)")
    width_z: Literal["median", "class", "knn"] = Field(
        "median", description="rule for Z's kernel width when sigma_z is not given: median pairwise, "
                              "median same-class, or k-th nearest neighbour distance")
    width_scale_x: float = Field(1.0, gt=0, description="multiplies the width the rule gives X")
    width_scale_z: float = Field(1.0, gt=0, description="multiplies the width the rule gives Z")
    width_k: int = Field(10, ge=1, description="neighbours of the rule knn")
    width_floor: float = Field(0.1, ge=0, le=1, description="isolation guard: a rule's width is at "
                                                            "least this times the median distance")
    copies: int = Field(1, ge=1, description="measured copies of the training set through each unit "
                                             "(fresh noise draws) that the next unit trains on")
    cycles: int = Field(0, ge=0, description="optimise-deploy-measure cycles after the first, each "
                                             "re-optimising every unit against its own measured outputs")
    cycle_steps: int | None = Field(None, ge=1, description="optimisation steps of each further cycle; "
                                                            "None: steps // 4 (at least 1)")
    estimator: Literal["exact", "fast"] = Field(
        "exact", description="entropy estimator: full eigendecomposition, or top eigenpairs + "
                             "bracketed tail (docs/information.md)")
    steps: int = Field(300, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(0.01, gt=0)
    optimiser: Literal["adam", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the unit is optimised; auto: CUDA when present, else CPU")

    @model_validator(mode="after")
    def _one_width_each(self):
        for v in ("x", "z"):
            if getattr(self, f"sigma_{v}") is not None and not self.width(v).is_median:
                raise ValueError(f"sigma_{v} fixes the width of {v.upper()}: give it or width_{v} / "
                                 f"width_scale_{v}, not both")
        return self

    @property
    def steps_per_cycle(self) -> int:
        """The optimisation steps of each cycle after the first (`cycle_steps`, else steps // 4)."""
        return self.cycle_steps or max(1, self.steps // 4)

    def width(self, variable: str) -> info.Width:
        """The width rule of variable "x" or "z" (used when its sigma is None)."""
        return info.Width(getattr(self, f"width_{variable}"), getattr(self, f"width_scale_{variable}"),
                          self.width_k, self.width_floor)


def resolve_device(name: str) -> torch.device:
    """The torch device of a `pib.device` setting: auto is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"pib.device: must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("pib.device: 'cuda' asked for, but torch sees no CUDA device "
                         "(use 'auto' or 'cpu')")
    return torch.device(name)


@dataclass(frozen=True)
class StepRecord:
    """One optimisation step: the loss and the objective's logged quantities (bits for the
    information terms) on its minibatch, evaluated before the parameter update."""

    step: int
    loss: float
    values: Mapping[str, float]


def check_index(value, name: str) -> int:
    """value as an int >= 0, or a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
    return int(value)


class UnitOptimiser:
    """Trains `model` (with the objective's own parameters) to minimise `objective.loss` on the
    minibatch `sample(s)` of each step s.

    `sample(s)` must depend on (its seed, s) only; torch's RNG inside the step is seeded by
    (seed, s): so a run resumed at step s from state_bytes() reproduces the uninterrupted one.
    The model and the objective's parameters are moved to `settings.device` (resolve_device),
    each batch with them; finish() moves them back to the CPU.
    """

    def __init__(self, model: torch.nn.Module, objective: Objective, sample: Callable[[int], Batch],
                 settings: PIBSettings, seed: int):
        self.model = model
        self.objective = objective
        self.sample = sample
        self.settings = settings
        self.seed = check_index(seed, "seed")
        self.device = resolve_device(settings.device)
        self._own = [p for p in objective.parameters()]
        self._move(self.device)
        params = [p for p in list(model.parameters()) + self._own if p.requires_grad]
        if not params:
            raise ValueError("model: has no trainable parameters")
        kind = torch.optim.Adam if settings.optimiser == "adam" else torch.optim.SGD
        self.optimiser = kind(params, lr=settings.lr, weight_decay=settings.weight_decay)

    def step(self, step: int) -> StepRecord:
        """One optimisation step on the minibatch of `step`."""
        check_index(step, "step")
        with torch.random.fork_rng(devices=[]):
            seed = self.seed * 1_000_003 + step
            if self.device.type == "cpu":  # torch.manual_seed also queues every accelerator's seeding,
                torch.default_generator.manual_seed(seed)  # recording a stack each time: 9% of a step
            else:
                torch.manual_seed(seed)
            batch = self.sample(step)
            if self.device.type != "cpu":
                batch = dataclasses.replace(batch, x=batch.x.to(self.device), h=batch.h.to(self.device),
                                            targets={k: v.to(self.device) for k, v in batch.targets.items()})
            loss, values = self.objective.loss(self.model, batch)
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
        return StepRecord(step, loss.item(), {k: float(v) for k, v in values.items()})

    def _move(self, device: torch.device) -> None:
        self.model.to(device)
        with torch.no_grad():
            for p in self._own:
                p.data = p.data.to(device)

    def finish(self) -> None:
        """Move the model and the objective's parameters back to the CPU (after training)."""
        self._move(torch.device("cpu"))

    def state_bytes(self) -> bytes:
        """The model's, the objective's and the optimiser's state, for a checkpoint: plain
        HDF5 arrays and attributes (labpnn.state_image), no pickle."""
        return state_image.dump({"model": self.model.state_dict(),
                                 "objective": [p.detach() for p in self._own],
                                 "optimiser": self.optimiser.state_dict()})

    def load_state_bytes(self, b: bytes) -> None:
        """Restore a state_bytes() checkpoint (or an older run file's torch archive; one
        without "objective": written before objectives had parameters); ValueError when it
        is damaged or does not fit this model."""
        try:
            state = state_image.load(bytes(b))
        except state_image.StateError as exc:
            raise ValueError(f"b: the optimiser state is damaged: {exc}") from None
        try:
            own = state.get("objective", [])
            if len(own) != len(self._own):
                raise ValueError(f"{len(own)} objective parameters saved, {len(self._own)} expected")
            self.model.load_state_dict(state["model"])
            with torch.no_grad():
                for p, saved in zip(self._own, own):
                    p.copy_(saved)
            self.optimiser.load_state_dict(state["optimiser"])
        except Exception as exc:  # load_state_dict raises many kinds
            raise ValueError(f"b: not a state saved by UnitOptimiser.state_bytes() "
                             f"for this model ({type(exc).__name__}: {exc})") from None
