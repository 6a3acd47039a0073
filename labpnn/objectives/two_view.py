"""Unsupervised PIB on two augmented views (`pib-2view`, issue 13): no labels.

For two random augmented views X1, X2 of the same inputs and the unit's features Z1, Z2 of
each (both measured through the hardware), maximise

    I(Z1; Z2) - beta * [I(X1; Z1) + I(X2; Z2)]

so the unit keeps what the views share and forgets what is view-specific, with no negative
pairs; `keep` (default 0) adds keep * [I(X1;Z1) + I(X2;Z2)], a reward for the features'
kernel following the inputs' (an infomax term: with keep > beta the unit keeps the input's
large-scale structure, as PCA does, where I(Z1;Z2) alone drifts, docs/unsupervised.md). Every term is the matrix-based Renyi mutual information of labpnn.info (bits) with
the same alpha and kernel widths as supervised PIB (sigma_x for the network inputs, sigma_z
for the features; None: the median rule).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

from labpnn import info
from labpnn.augment import VIEW_TARGETS
from labpnn.objectives import ObjectiveContext, register_objective
from labpnn.protocols import Batch

__all__ = ["TwoViewOptions", "TwoViewPIB", "TwoViewTerms", "two_view_terms"]


class TwoViewTerms(NamedTuple):
    """Scalar tensors (bits); loss = -objective is what to minimise."""

    objective: torch.Tensor
    loss: torch.Tensor
    i_z1z2: torch.Tensor
    i_x1z1: torch.Tensor
    i_x2z2: torch.Tensor


def two_view_terms(x1, x2, z1, z2, *, beta: float, alpha: float = 1.01, sigma_x=None,
                   sigma_z=None, width_x: info.Width | None = None,
                   width_z: info.Width | None = None, keep: float = 0.0) -> TwoViewTerms:
    """objective = I(Z1;Z2) - (beta - keep) [I(X1;Z1) + I(X2;Z2)] for views x1, x2 (n, ...) and their
    features z1, z2 (n, ...), differentiable in z1 and z2. Kernel widths: sigma_x, sigma_z when
    given, else by the label-free rules width_x, width_z (info.Width "median" or "knn"), each
    view's own. S(Z1) and S(Z2) are computed once."""
    b = float(beta)
    if not (math.isfinite(b) and b >= 0):
        raise ValueError(f"beta: must be finite and >= 0, got {beta!r}")
    g = float(keep)
    if not (math.isfinite(g) and g >= 0):
        raise ValueError(f"keep: must be finite and >= 0, got {keep!r}")
    a = info._check_alpha(alpha)
    z1t, z2t = info._samples(z1, "z1"), info._samples(z2, "z2")
    info._same_n(z1t, z2t, "z1", "z2")
    with torch.no_grad():
        grams_x = []
        for x, name in ((x1, "x1"), (x2, "x2")):
            a_x = info._gaussian(info._samples(x, name), sigma_x, "sigma_x", width_x)
            info._same_n(z1t, a_x, "z1", name)
            grams_x.append((a_x, info._entropy(a_x, a)))
    a_z1, a_z2 = (info._gaussian(z, sigma_z, "sigma_z", width_z) for z in (z1t, z2t))
    s_z1, s_z2 = info._entropy(a_z1, a), info._entropy(a_z2, a)
    i_z1z2 = s_z1 + s_z2 - info._entropy(a_z1 * a_z2, a)
    i_xz = [s_x + s_z - info._entropy(a_x.to(a_z.dtype) * a_z, a)
            for (a_x, s_x), a_z, s_z in zip(grams_x, (a_z1, a_z2), (s_z1, s_z2))]
    objective = i_z1z2 - (b - g) * (i_xz[0] + i_xz[1])
    return TwoViewTerms(objective, -objective, i_z1z2, i_xz[0], i_xz[1])


class TwoViewOptions(BaseModel):
    """A recipe's `objective: {name: pib-2view, ...}` options."""

    model_config = ConfigDict(extra="forbid")
    needs: ClassVar[frozenset[str]] = VIEW_TARGETS  # what the recipe must provide (augment:)

    beta: float | None = Field(None, ge=0, description="weight of I(X1;Z1) + I(X2;Z2); None: the pib section's beta")
    keep: float = Field(0.0, ge=0, description="reward weight of I(X1;Z1) + I(X2;Z2) (infomax); 0: none")


class TwoViewPIB:
    """The pib-2view objective: reads the unit's input h and the network input x of view 1, and
    targets "h2", "x2" of view 2; never labels."""

    name = "pib-2view"
    needs = TwoViewOptions.needs

    def __init__(self, *, beta: float, alpha: float = 1.01, sigma_x: float | None = None,
                 sigma_z: float | None = None, width_x: info.Width | None = None,
                 width_z: info.Width | None = None, keep: float = 0.0):
        self.beta, self.alpha, self.sigma_x, self.sigma_z = beta, alpha, sigma_x, sigma_z
        self.width_x, self.width_z, self.keep = width_x, width_z, keep

    def parameters(self) -> tuple[torch.nn.Parameter, ...]:
        return ()

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss and, in bits, I(Z1;Z2) and I(X;Z) (the mean of I(X1;Z1) and I(X2;Z2))."""
        t = batch.targets
        terms = two_view_terms(batch.x, t["x2"], model(batch.h), model(t["h2"]), beta=self.beta,
                               alpha=self.alpha, sigma_x=self.sigma_x, sigma_z=self.sigma_z,
                               width_x=self.width_x, width_z=self.width_z, keep=self.keep)
        return terms.loss, {"I_Z1Z2": terms.i_z1z2.item(),
                            "I_XZ": 0.5 * (terms.i_x1z1.item() + terms.i_x2z2.item())}


def _build(options: TwoViewOptions, ctx: ObjectiveContext) -> TwoViewPIB:
    s = ctx.settings
    return TwoViewPIB(beta=s.beta if options.beta is None else options.beta, alpha=s.alpha, sigma_x=s.sigma_x,
                      sigma_z=s.sigma_z, width_x=s.width("x"), width_z=s.width("z"), keep=options.keep)


register_objective("pib-2view", TwoViewOptions, _build)
