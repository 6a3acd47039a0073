"""The supervised PIB objective: maximise I(Y;Z) - beta * I(X;Z) on each minibatch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from labpnn.objectives import ObjectiveContext, register_objective
from labpnn.pib import PIBSettings, pib_terms
from labpnn.protocols import Batch


class PIBOptions(BaseModel):
    """`objective: {name: pib, ...}`: each omitted term comes from the recipe's `pib:` section."""

    model_config = ConfigDict(extra="forbid")
    alpha: float | None = Field(None, gt=0)
    beta: float | None = Field(None, ge=0)
    sigma_x: float | None = Field(None, gt=0)
    sigma_z: float | None = Field(None, gt=0)
    estimator: Literal["exact", "fast"] | None = None


class PIBObjective:
    """Supervised PIB: loss -(I(Y;Z) - beta I(X;Z)) in bits, Z = model(h), with labels "y"."""

    name = "pib"
    needs = frozenset({"y"})

    def __init__(self, *, beta: float, alpha: float = 1.01, sigma_x: float | None = None,
                 sigma_z: float | None = None, estimator: str = "exact"):
        self.beta, self.alpha, self.sigma_x, self.sigma_z = beta, alpha, sigma_x, sigma_z
        self.estimator = estimator

    def parameters(self):
        return []

    def loss(self, model, batch: Batch):
        terms = pib_terms(batch.x, batch.targets["y"], model(batch.h), beta=self.beta, alpha=self.alpha,
                          sigma_x=self.sigma_x, sigma_z=self.sigma_z, estimator=self.estimator)
        return terms.loss, {"I_XZ": terms.i_xz.item(), "I_YZ": terms.i_yz.item()}


def _build(options: PIBOptions, ctx: ObjectiveContext) -> PIBObjective:
    s = ctx.settings
    pick = {k: getattr(s, k) if getattr(options, k) is None else getattr(options, k)
            for k in ("alpha", "beta", "sigma_x", "sigma_z", "estimator")}
    return PIBObjective(**pick)


register_objective("pib", PIBOptions, _build)


def pib_optimiser(model, inputs, x, y, settings: PIBSettings, seed: int):
    """A UnitOptimiser of supervised PIB on (inputs, x, y) with `settings`: what the cascade sets
    up for one unit, outside a run (tests, benchmarks)."""
    from labpnn.batches import sampler
    from labpnn.pib import UnitOptimiser

    objective = PIBObjective(beta=settings.beta, alpha=settings.alpha, sigma_x=settings.sigma_x,
                             sigma_z=settings.sigma_z)
    return UnitOptimiser(model, objective, sampler(x, inputs, {"y": y}, settings.batch_size, seed), settings, seed)
