"""Minibatches for UnitOptimiser: `sampler(...)` returns sample(step), rows chosen by
(seed, step) only, so a resumed optimisation draws the batches an uninterrupted one draws."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from labpnn import info
from labpnn.pib import check_index
from labpnn.protocols import Batch


def as_rows(a, name: str, *, labels: bool = False) -> torch.Tensor:
    """a as a tensor of >= 2 rows: int64 labels, or finite float32 (network inputs flattened by
    the caller)."""
    if labels:
        return info._labels(a, name).to(torch.int64)
    t = info._tensor(a, name).to(torch.float32)
    info._check_finite(t, name)
    return t


def sampler(x, h, targets: Mapping[str, object], batch_size: int, seed: int,
            labels: frozenset[str] = frozenset({"y"})) -> Callable[[int], Batch]:
    """sample(step) -> the Batch of `batch_size` rows (all rows when fewer) drawn without
    replacement by np.random.default_rng([seed, step]). x: the network input (flattened),
    h: the unit's inputs, targets: named row arrays (the names in `labels` are integer labels)."""
    seed = check_index(seed, "seed")
    xt = as_rows(x, "x")
    xt = xt.reshape(xt.shape[0], -1)
    ht = as_rows(h, "inputs")
    tt = {k: as_rows(v, k, labels=k in labels) for k, v in targets.items()}
    for name, t in (("x", xt), *tt.items()):
        info._same_n(ht, t, "inputs", name)
    n = ht.shape[0]
    size = min(int(batch_size), n)

    def sample(step: int) -> Batch:
        rng = np.random.default_rng([seed, check_index(step, "step")])
        idx = torch.from_numpy(rng.choice(n, size, replace=False))
        return Batch(xt[idx], ht[idx], {k: t[idx] for k, t in tt.items()})

    return sample
