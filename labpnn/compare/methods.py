"""The methods `labpnn compare` puts side by side: name -> how the recipe is changed, on which
bench, and the knob the tuning budget tries.

Every method trains the same recipe (units, sizes, activations, data, seed, measurement) on the
same twin seed; what differs is only what a method is. Fairness rules (docs/compare.md):

- readout: every hardware method ends with the engine's readout refitted on the last unit's
  measured training features (ctx.readout, the cascade's rule); backprop also has the row
  "deployed as trained" (its in-silico readout kept), the usual way an in-silico net is used;
- clipping: the recipe's `clip:` rule for every method deployed on the twin; the "in simulation"
  rows (noise-free twin) are not clipped;
- tuning: every method gets the same budget: `Mode.lr_values` learning rates around its own
  default (x 1/3, x 1, x 3, ...), each tried once (seed 0) on a validation split held out of the
  training split; the best validation accuracy picks the rate used for every seed. Nothing
  else is tuned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["METHODS", "Method", "lr_grid"]


@dataclass(frozen=True)
class Method:
    """One row of the comparison."""

    label: str
    scheme: dict[str, Any] | None = None   # the recipe's scheme (None: the cascade, i.e. PIB)
    bench: str = "twin"                    # "twin" (calibrated noise) or "ideal" (noise-free)
    clip: bool = True                      # keep the units' clip: rule (False: weights as trained)
    lr: tuple[str, ...] = ("scheme", "lr")  # where the tuned learning rate lives in the recipe
    default_lr: float = 1e-3
    epochs: str | None = "bp"              # which Mode epochs the scheme takes ("bp", "loop"), if any
    extra: dict[str, Any] = field(default_factory=dict)   # more scheme options

    @property
    def needs_scheme(self) -> str:
        return self.scheme["name"] if self.scheme else "cascade"


BACKPROP = {"name": "backprop"}
METHODS: dict[str, Method] = {
    "pib": Method("PIB on the twin", lr=("pib", "lr"), default_lr=0.01, epochs=None),
    "pib-sim": Method("PIB in simulation (noise-free twin, not clipped)", bench="ideal", clip=False,
                      lr=("pib", "lr"), default_lr=0.01, epochs=None),
    "backprop-in-silico": Method("backprop in silico (noise-free twin, not clipped)",
                                 {**BACKPROP, "readout": "trained"}, bench="ideal", clip=False),
    "backprop-deployed-as-trained": Method("backprop deployed, weights and readout as trained",
                                           {**BACKPROP, "readout": "trained"}, clip=False),
    "backprop-deployed": Method("backprop deployed, weights clipped, readout as trained",
                                {**BACKPROP, "readout": "trained"}),
    "backprop-refit": Method("backprop deployed (clipped), readout refitted on measured features",
                             {**BACKPROP, "readout": "refit"}),
    "backprop-finetune": Method("backprop, layer-wise chip-in-the-loop fine-tuning, readout refitted",
                                {**BACKPROP, "readout": "refit"}, extra={"finetune": True}),
    "pat": Method("physics-aware training (PAT)", {"name": "pat"}, default_lr=3e-3, epochs="loop"),
    "dfa": Method("direct feedback alignment (DFA)", {"name": "dfa"}, default_lr=3e-3, epochs="loop"),
    "phyll": Method("physical local learning (PhyLL)", {"name": "phyll"}, default_lr=3e-3, epochs="loop"),
}


def lr_grid(default: float, n: int) -> list[float]:
    """n learning rates around `default`, spaced by factors of 3 (n = 1: the default alone)."""
    offsets = sorted(range(-(n // 2), n - n // 2), key=lambda k: (abs(k), -k))[:n]
    return sorted(float(f"{default * 3.0 ** k:.3g}") for k in offsets)
