"""Objectives: what one unit minimises on a batch (labpnn.protocols.Objective), by name.

    register_objective(name, Options, factory)    factory(options, ObjectiveContext) -> Objective

A recipe's `objective:` (and a unit's, overriding it) names one; omitted, it is `pib`, the
supervised PIB with the recipe's `pib:` settings. docs/engine.md shows how to write one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from labpnn.pib import PIBSettings
from labpnn.plugins import Registry
from labpnn.protocols import Objective

OBJECTIVES = Registry("objective")
DEFAULT = "pib"


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective's factory may know of its unit and run."""

    index: int              # the unit's position in the network
    in_features: int        # the unit's input width (what model() takes after prepare())
    out_features: int       # the unit's output width
    n_classes: int          # of the dataset; of an RL environment: its actions
    settings: PIBSettings   # the unit's `pib:` settings (the recipe's, with the unit's overrides)
    seed: int               # the unit's seed (recipe seed, unit index)
    last: bool = False      # the network's last unit (in RL its outputs are the Q-values)


def register_objective(name: str, options: type[BaseModel],
                       factory: Callable[[BaseModel, ObjectiveContext], Objective]) -> None:
    OBJECTIVES.register(name, options, factory)


from labpnn.objectives import pib as _pib  # noqa: E402,F401  (registers "pib")
from labpnn.objectives import two_view as _two_view  # noqa: E402,F401  (registers "pib-2view")
from labpnn.objectives import pib_td as _pib_td  # noqa: E402,F401  (registers "pib-td")
