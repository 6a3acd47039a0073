"""Augmented views of the training inputs, carried through the cascade as measured (issue 13).

An objective whose `needs` holds "x2"/"h2" (pib-2view) trains each unit on two views of every
training input, drawn from a pool of V augmented draws per input (the recipe's
`augment_views`, default 2: one fixed pair). Draw v (1..V) is the recipe's `augment:`
pipeline applied with the recipe seed and v, and after each unit every draw is measured
through its hardware, so unit l trains on its inputs' draws as units 0..l-1 really produced
them. Each minibatch picks, for every sample in it, two distinct draws at random (seeded by
the unit's seed and the step, like the rows): view 1 is the network input and unit input x and
h, view 2 the targets "x2" and "h2"; labels never reach them.

The draws' measurements are not part of the run file (its splits are train and test): a
resumed run measures the draws of the finished units again on the hardware.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from labpnn.augment import VIEW_TARGETS
from labpnn.batches import as_rows
from labpnn.pib import check_index
from labpnn.protocols import Batch, Unit


def wanted(ctx) -> bool:
    """Whether any unit's objective reads two views."""
    return any(VIEW_TARGETS & ctx.objective(i).needs for i in range(len(ctx.units)))


def pair_sampler(x: list[np.ndarray], h: list[np.ndarray], batch_size: int, seed: int) -> Callable[[int], Batch]:
    """sample(step) -> a Batch of `batch_size` rows (all rows when fewer) drawn without
    replacement, each with two distinct draws of its row chosen at random, all by
    np.random.default_rng([seed, step]). x, h: the V >= 2 draws' network inputs and unit inputs."""
    seed = check_index(seed, "seed")
    if len(x) != len(h) or len(x) < 2:
        raise ValueError(f"views: need the same number (>= 2) of network and unit inputs, got {len(x)}, {len(h)}")
    xt = torch.stack([as_rows(v, "x").reshape(len(v), -1) for v in x])
    ht = torch.stack([as_rows(v, "inputs") for v in h])
    if xt.shape[1] != ht.shape[1]:
        raise ValueError(f"views: {xt.shape[1]} network inputs but {ht.shape[1]} unit inputs")
    n, k = ht.shape[1], ht.shape[0]
    size = min(int(batch_size), n)

    def sample(step: int) -> Batch:
        rng = np.random.default_rng([seed, check_index(step, "step")])
        idx = rng.choice(n, size, replace=False)
        first = rng.integers(0, k, size)
        second = (first + rng.integers(1, k, size)) % k  # another draw of the same row
        a, b, rows = (torch.from_numpy(v) for v in (first, second, idx))
        return Batch(xt[a, rows], ht[a, rows], {"x2": xt[b, rows], "h2": ht[b, rows]})

    return sample


class Views:
    """The pool of draws: their network inputs `x` and the next unit's inputs `h` (V arrays each)."""

    def __init__(self, ctx):
        pipeline = ctx.recipe.augmentations()
        self.x = [pipeline(ctx.dataset.x_train, ctx.seed, v) for v in range(1, ctx.recipe.augment_views + 1)]
        self.h = self.x

    def sample(self, ctx, index: int, rev: int, unit: Unit, batch_size: int) -> Callable[[int], Batch]:
        """The minibatches of unit `index`: its prepared inputs of two draws per sample."""
        return pair_sampler(self.x, [ctx.prepare(index, unit, h) for h in self.h], batch_size,
                            ctx.unit_seed(index, rev))

    def measure(self, ctx, index: int, unit: Unit) -> None:
        """Every draw through the deployed unit (health-checked, not logged): the next unit's inputs."""
        ctx.ensure_deployed(index, unit)
        self.h = [ctx.measure(index, None, unit, h, f"train view {v}") for v, h in enumerate(self.h, 1)]
