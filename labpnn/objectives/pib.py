"""The supervised PIB objective: maximise I(Y;Z) - beta * I(X;Z) on each minibatch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from labpnn.config_errors import validate
from labpnn.info import Width
from labpnn.objectives import ObjectiveContext, register_objective
from labpnn.pib import PIBSettings, pib_terms
from labpnn.protocols import Batch

WidthRule = Literal["median", "class", "knn"]


class PIBOptions(BaseModel):
    """`objective: {name: pib, ...}`: each omitted term comes from the recipe's `pib:` section."""

    model_config = ConfigDict(extra="forbid")
    alpha: float | None = Field(None, gt=0)
    beta: float | None = Field(None, ge=0)
    sigma_x: float | None = Field(None, gt=0)
    sigma_z: float | None = Field(None, gt=0)
    estimator: Literal["exact", "fast"] | None = None
    width_x: WidthRule | None = None
    width_z: WidthRule | None = None
    width_scale_x: float | None = Field(None, gt=0)
    width_scale_z: float | None = Field(None, gt=0)


class PIBObjective:
    """Supervised PIB: loss -(I(Y;Z) - beta I(X;Z)) in bits, Z = model(h), with labels "y";
    kernel widths sigma_* when given, else by the rules width_* (labpnn.info.Width)."""

    name = "pib"
    needs = frozenset({"y"})

    def __init__(self, *, beta: float, alpha: float = 1.01, sigma_x: float | None = None,
                 sigma_z: float | None = None, estimator: str = "exact", width_x: Width | None = None,
                 width_z: Width | None = None):
        self.beta, self.alpha, self.sigma_x, self.sigma_z = beta, alpha, sigma_x, sigma_z
        self.estimator, self.width_x, self.width_z = estimator, width_x, width_z

    def parameters(self):
        return []

    def loss(self, model, batch: Batch):
        terms = pib_terms(batch.x, batch.targets["y"], model(batch.h), beta=self.beta, alpha=self.alpha,
                          sigma_x=self.sigma_x, sigma_z=self.sigma_z, estimator=self.estimator,
                          width_x=self.width_x, width_z=self.width_z)
        return terms.loss, {"I_XZ": terms.i_xz.item(), "I_YZ": terms.i_yz.item()}


def objective_of(settings: PIBSettings) -> PIBObjective:
    """The supervised PIB objective of a `pib:` section (its terms and width rules)."""
    return PIBObjective(beta=settings.beta, alpha=settings.alpha, sigma_x=settings.sigma_x,
                        sigma_z=settings.sigma_z, estimator=settings.estimator, width_x=settings.width("x"),
                        width_z=settings.width("z"))


def _build(options: PIBOptions, ctx: ObjectiveContext) -> PIBObjective:
    given = {k: v for k, v in options.model_dump().items() if v is not None}
    # a fixed sigma with a width rule is refused here, naming the clash
    return objective_of(validate(PIBSettings, {**ctx.settings.model_dump(), **given}, f"objective pib (unit {ctx.index})"))


register_objective("pib", PIBOptions, _build)


def pib_optimiser(model, inputs, x, y, settings: PIBSettings, seed: int):
    """A UnitOptimiser of supervised PIB on (inputs, x, y) with `settings`: what the cascade sets
    up for one unit, outside a run (tests, benchmarks)."""
    from labpnn.batches import sampler
    from labpnn.pib import UnitOptimiser

    return UnitOptimiser(model, objective_of(settings), sampler(x, inputs, {"y": y}, settings.batch_size, seed),
                         settings, seed)
