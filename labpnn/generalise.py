"""The paper's generalisation tests, for any trained method: input noise, OOD detection, data efficiency.

API (every result is a plain record {"test", "setting", "value", "unit"}):

    run = Run(variant(recipe, train_classes=[0, 1, 2, 3, 4, 5, 6, 7]), bench, path)
    run.execute()
    records = evaluate(run)                   # noise curve + OOD AUROC (+ the data-efficiency point)

- `evaluate(run, levels=NOISE_LEVELS, seed=None, save=False)`: all of the below for a run
  executed to its end in this process (any scheme that leaves deployed units and a fitted
  readout: `Run.predict`); with save=True also added to its run file.
- `record(path, records)`: records into a finished run file (its analyses/, which
  `labpnn inspect --json` shows under "analyses"; RunLog.annotate).
  All inputs go through the hardware in one `Run.predict` call, so every setting sees the same
  deployment (a crossbar shared by several units is reprogrammed, with fresh programming noise,
  at each call).
- `noise_curve(predict, x, y, levels, seed)`: test accuracy (%) with Gaussian noise of standard
  deviation `level` % of the clean inputs' RMS (one scalar: the root mean square of every value of
  `x`) added to every input value; record {"test": "noise", "setting": level (%, of the input
  RMS), "value": accuracy, "unit": "%"}.
- `ood_auroc(predict, x_in, x_out, held_out)`: AUROC of the readout's maximum softmax
  probability separating the in-distribution test samples (positives) from the held-out classes'
  ones; {"test": "ood", "setting": "held out 8,9", "value": AUROC (0.5: chance, 1: perfect),
  "unit": "AUROC"}.
- `data_record(run)`: the run's own test accuracy at its `dataset.train_fraction`; {"test":
  "data", "setting": fraction (% of the training split), "value": accuracy, "unit": "%"}.
  Data efficiency is runs at `variant(recipe, train_fraction=f)` for f in FRACTIONS.
- `variant(recipe, seed=, train_fraction=, train_classes=)`: a copy of a recipe (validated) with
  its seed (recipe and dataset) and data options changed.

`predict` is a callable inputs -> class probabilities (n, n_classes), e.g. `run.predict`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from labpnn.recipe import Recipe, parse_recipe

__all__ = ["FRACTIONS", "NOISE_LEVELS", "auroc", "data_record", "evaluate", "noise_curve", "ood_auroc",
           "record", "variant"]

NOISE_LEVELS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)   # noise std, % of the clean inputs' RMS
FRACTIONS = (0.1, 0.2, 0.5, 1.0)                  # shares of the training split
OOD_TRAIN_CLASSES = list(range(8))                # the paper's OOD test: train on 0-7, score 8 and 9

Predict = Callable[[np.ndarray], np.ndarray]


def _record(test: str, setting, value: float, unit: str) -> dict:
    return {"test": test, "setting": setting, "value": float(value), "unit": unit}


def noisy_copies(x: np.ndarray, levels: Sequence[float], seed: int) -> np.ndarray:
    """x with Gaussian noise of std level % of x's RMS, one copy per level, stacked (float32)."""
    x = np.asarray(x, np.float32)
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    rng = np.random.default_rng(seed)
    return np.concatenate([x + (level / 100 * rms) * rng.standard_normal(x.shape).astype(np.float32)
                           for level in levels])


def _accuracy_records(probabilities: np.ndarray, y: np.ndarray, levels: Sequence[float]) -> list[dict]:
    hits = probabilities.argmax(1).reshape(len(levels), len(y)) == y
    return [_record("noise", float(level), 100 * hit.mean(), "%") for level, hit in zip(levels, hits)]


def noise_curve(predict: Predict, x: np.ndarray, y: np.ndarray, levels: Sequence[float] = NOISE_LEVELS,
                seed: int = 0) -> list[dict]:
    """Test accuracy (%) under input noise at each level (std, % of x's RMS), one predict call."""
    _check_levels(levels)
    return _accuracy_records(predict(noisy_copies(x, levels, seed)), np.asarray(y), levels)


def auroc(score_in: np.ndarray, score_out: np.ndarray) -> float:
    """Area under the ROC curve of scores telling in-distribution (higher) from out-of-distribution
    samples: 0.5 when they cannot tell, 1 when every in-sample scores above every out-sample."""
    if len(score_in) == 0 or len(score_out) == 0:
        raise ValueError("auroc: needs in-distribution and out-of-distribution samples "
                         f"(got {len(score_in)} and {len(score_out)})")
    labels = np.r_[np.ones(len(score_in)), np.zeros(len(score_out))]
    return float(roc_auc_score(labels, np.r_[score_in, score_out]))


def _ood_record(p_in: np.ndarray, p_out: np.ndarray, held_out: Sequence[int]) -> dict:
    value = auroc(p_in.max(1), p_out.max(1))
    return _record("ood", "held out " + ",".join(str(int(c)) for c in sorted(set(held_out))), value, "AUROC")


def ood_auroc(predict: Predict, x_in: np.ndarray, x_out: np.ndarray, held_out: Sequence[int]) -> dict:
    """OOD detection from the readout's maximum softmax probability, one predict call."""
    p = predict(np.concatenate([x_in, x_out]))
    return _ood_record(p[:len(x_in)], p[len(x_in):], held_out)


def data_record(run) -> dict:
    """The run's recorded test accuracy (%) at its training fraction (% of the training split)."""
    from labpnn.runlog.reader import RunReader

    with RunReader(run.path) as reader:
        accuracy = reader.test_accuracy
    return _record("data", 100 * run.recipe.dataset.train_fraction, 100 * accuracy, "%")


def record(path, records: Sequence[dict]) -> None:
    """Add `records` to the finished run file at `path` (its analyses/, `labpnn inspect --json`
    shows them under "analyses")."""
    from labpnn.runlog import RunLog

    with RunLog.annotate(path) as log:
        for r in records:
            log.analysis(r)


def evaluate(run, levels: Sequence[float] = NOISE_LEVELS, seed: int | None = None, *,
             save: bool = False) -> list[dict]:
    """The noise curve on the run's test set, the OOD AUROC (on clean inputs) when its recipe
    holds classes out (dataset.train_classes), and its data-efficiency point; one Run.predict
    call for all. `seed` (default the recipe's) draws the noise. With `save`, the records are
    also added to the run file (record(); or record a selection of them yourself)."""
    _check_levels(levels)
    ds = run.dataset
    if ds is None or not hasattr(ds, "x_test"):
        raise ValueError("evaluate: needs a supervised run executed in this process")
    ood = ds.x_ood is not None and len(ds.x_ood) > 0
    settings = list(levels) + ([0.0] if ood and 0.0 not in levels else [])
    batch = noisy_copies(ds.x_test, settings, run.recipe.seed if seed is None else seed)
    p = run.predict(np.concatenate([batch, ds.x_ood]) if ood else batch)
    n = len(ds.y_test)
    records = _accuracy_records(p[:n * len(levels)], ds.y_test, levels)
    if ood:
        clean = settings.index(0.0) * n
        records.append(_ood_record(p[clean:clean + n], p[len(batch):], ds.meta["ood_classes"]))
    records.append(data_record(run))
    if save:
        record(run.path, records)
    return records


def variant(recipe: Recipe, *, seed: int | None = None, train_fraction: float | None = None,
            train_classes: list[int] | None = None) -> Recipe:
    """A copy of `recipe` with its seed (the recipe's and the dataset's) and its data options
    changed (None: as they are), validated like a recipe file."""
    data = recipe.model_dump()
    if seed is not None:
        data["seed"] = seed
        data["dataset"]["seed"] = seed
    if train_fraction is not None:
        data["dataset"]["train_fraction"] = train_fraction
    if train_classes is not None:
        data["dataset"]["train_classes"] = list(train_classes)
    return parse_recipe(data, recipe.source)


def _check_levels(levels: Sequence[float]) -> None:
    if not len(levels) or any(not np.isfinite(v) or v < 0 for v in levels):
        raise ValueError(f"noise levels: give one or more finite levels >= 0 (% of the input RMS), got {list(levels)}")
