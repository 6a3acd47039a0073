"""Two augmented views of the training inputs, carried through the cascade as measured (issue 13).

An objective whose `needs` holds "x2"/"h2" (pib-2view) trains each unit on two views of every
training input: view v (1, 2) is the recipe's `augment:` pipeline applied with the recipe seed,
and after each unit both views are measured through its hardware, so unit l trains on its
inputs' views as units 0..l-1 really produced them. Batches hold the view-1 network input and
unit input as x and h, view 2 as targets "x2" and "h2"; labels never reach them.

The views' measurements are not part of the run file (its splits are train and test): a
resumed run measures the views of the finished units again on the hardware.
"""

from __future__ import annotations

from collections.abc import Callable

from labpnn.augment import VIEW_TARGETS
from labpnn.batches import sampler
from labpnn.protocols import Batch, Unit


def wanted(ctx) -> bool:
    """Whether any unit's objective reads two views."""
    return any(VIEW_TARGETS & ctx.objective(i).needs for i in range(len(ctx.units)))


class Views:
    """The views' network inputs `x` and the next unit's inputs `h` (both a pair of arrays)."""

    def __init__(self, ctx):
        pipeline = ctx.recipe.augmentations()
        self.x = tuple(pipeline(ctx.dataset.x_train, ctx.seed, v) for v in (1, 2))
        self.h = self.x

    def sample(self, ctx, index: int, rev: int, unit: Unit, batch_size: int) -> Callable[[int], Batch]:
        """The minibatches of unit `index`: its prepared inputs of both views."""
        p1, p2 = (ctx.prepare(index, unit, h) for h in self.h)
        return sampler(self.x[0], p1, {"x2": self.x[1], "h2": p2}, batch_size, ctx.unit_seed(index, rev),
                       labels=frozenset())

    def measure(self, ctx, index: int, unit: Unit) -> None:
        """Both views through the deployed unit (health-checked, not logged): the next unit's inputs."""
        ctx.ensure_deployed(index, unit)
        self.h = tuple(ctx.measure(index, None, unit, h, f"train view {v}")
                       for v, h in enumerate(self.h, 1))
