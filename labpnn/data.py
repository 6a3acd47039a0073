"""Datasets, without network access: MNIST-1D (generated), scikit-learn's digits, and
MNIST / Fashion-MNIST from local IDX files.

Features are float32 (n, d) (images scaled to [0, 1]); labels int64. Splits and
subsamples are stratified and deterministic; `meta` records where the data came from.

For the generalisation tests (labpnn.generalise, docs/generalisation.md), `load` also takes
`train_classes` (the test samples of the other classes become the out-of-distribution set
`x_ood`, `y_ood`) and `train_fraction` (a stratified, seeded share of the training split).
"""

from __future__ import annotations

import gzip
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labpnn.errors import DataError

__all__ = ["NAMES", "Dataset", "load", "read_idx"]

NAMES = ("mnist1d", "digits", "mnist", "fashion-mnist")
IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
SPLIT_SEED = 0            # the fixed seed of splits that have no official version
T10K_TEST = 2000          # t10k alone: stratified 8,000 / 2,000 train / test
DIGITS_TEST = 360         # sklearn digits (1,797 images): 1,437 / 360
MNIST1D_SEED = 42         # the published MNIST-1D generation seed
MNIST1D_SAMPLES = 5000    # ... and size (4,000 train / 1,000 test)


@dataclass
class Dataset:
    """Train and test splits: float32 features (n, d), int64 labels 0..n_classes-1."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    meta: dict[str, Any] = field(default_factory=dict)
    x_ood: np.ndarray | None = None   # test samples of the held-out classes (train_classes), or None
    y_ood: np.ndarray | None = None   # ... and their original labels


# -- IDX ----------------------------------------------------------------------------------

def read_idx(path: str | Path) -> np.ndarray:
    """The array in an IDX file (raw, or gzip when the name ends in .gz), native byte order.
    A malformed, truncated or oversized file raises DataError naming it."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a corrupt gzip stream
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: not an IDX file (magic number 0x{raw[:4].hex()})")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{path}: truncated header ({ndim} dimensions need {start} bytes, "
                        f"file has {len(raw)})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape)) * dtype.itemsize
    found = len(raw) - start
    if found < expected:
        raise DataError(f"{path}: truncated: header {shape} needs {expected} data bytes, "
                        f"file has {found}")
    if found > expected:
        raise DataError(f"{path}: size does not match header {shape}: {found - expected} "
                        f"bytes beyond the {expected} expected")
    return np.frombuffer(raw, dtype, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(name: str, path: str | Path | None) -> tuple[Path, dict[str, Path]]:
    """The folder holding the IDX files of `name` and the files found there."""
    root = path if path is not None else os.environ.get("LABPNN_DATA")
    if root is None:
        raise DataError(f"{name}: no data folder; pass path= or set LABPNN_DATA to a folder "
                        f"holding {', '.join(IDX_FILES.values())} (optionally .gz)")
    root = Path(root)
    for folder in (root / name, root):
        found = {}
        for key, stem in IDX_FILES.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if "test_images" in found and "test_labels" in found:
            return folder, found
    raise DataError(f"{name}: no IDX files in {root} (nor {root / name}); expected "
                    f"{IDX_FILES['test_images']} and {IDX_FILES['test_labels']} "
                    f"(+ {IDX_FILES['train_images']}, {IDX_FILES['train_labels']} for the "
                    f"official split), raw or .gz")


def _images_labels(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{images.parent}: {images.name} {x.shape} and {labels.name} {y.shape} "
                        f"do not pair up as images and labels")
    return (x.reshape(len(x), -1).astype(np.float32) / 255.0), y.astype(np.int64)


def _load_idx(name: str, path) -> tuple[np.ndarray, ...]:
    folder, files = _find_idx(name, path)
    x_test, y_test = _images_labels(files["test_images"], files["test_labels"])
    has_train = ("train_images" in files, "train_labels" in files)
    meta = {"source": "idx", "folder": str(folder.resolve()),
            "files": {k: str(v.resolve()) for k, v in sorted(files.items())}}
    if all(has_train):
        x_train, y_train = _images_labels(files["train_images"], files["train_labels"])
        meta["split"] = "official"
    elif any(has_train):
        missing = [IDX_FILES[k] for k, h in zip(("train_images", "train_labels"), has_train) if not h]
        raise DataError(f"{folder}: {missing[0]} is missing (the train files come in pairs)")
    else:
        test = _stratified(y_test, max(1, min(T10K_TEST, len(y_test) // 5)), SPLIT_SEED)
        train = np.setdiff1d(np.arange(len(y_test)), test)
        x_train, y_train = x_test[train], y_test[train]
        x_test, y_test = x_test[test], y_test[test]
        meta["split"] = f"t10k only: stratified {len(train)}/{len(test)}, seed {SPLIT_SEED}"
    return x_train, y_train, x_test, y_test, meta


# -- generated and bundled ----------------------------------------------------------------

def _load_mnist1d(n_train: int | None, n_test: int | None) -> tuple[np.ndarray, ...]:
    """The published MNIST-1D generator (seed 42), made bigger only when asked for more."""
    from mnist1d.data import get_dataset_args, make_dataset  # imports matplotlib: lazily

    args = get_dataset_args()
    args.seed = MNIST1D_SEED
    # at least the published 5,000; enough for the 80/20 split to hold n_train and n_test
    need = max(MNIST1D_SAMPLES, -(-5 * (n_train or 0) // 4), 5 * (n_test or 0))
    args.num_samples = -(-need // 50) * 50
    state_np, state_py = np.random.get_state(), random.getstate()
    try:  # make_dataset seeds the global RNGs
        d = make_dataset(args)
    finally:
        np.random.set_state(state_np)
        random.setstate(state_py)
    meta = {"source": "mnist1d.make_dataset", "generation_seed": args.seed,
            "num_samples": args.num_samples, "split": f"generator's {args.train_split:.0%} train"}
    return (d["x"].astype(np.float32), d["y"].astype(np.int64),
            d["x_test"].astype(np.float32), d["y_test"].astype(np.int64), meta)


def _load_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    test = _stratified(y, DIGITS_TEST, SPLIT_SEED)
    train = np.setdiff1d(np.arange(len(y)), test)
    x = (x / 16.0).astype(np.float32)
    meta = {"source": "sklearn.datasets.load_digits",
            "split": f"stratified {len(train)}/{len(test)}, seed {SPLIT_SEED}"}
    return x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64), meta


# -- subsampling --------------------------------------------------------------------------

def _stratified(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted indices of k samples whose class proportions follow y's (largest remainder)."""
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    share = k * counts / len(y)
    quota = np.floor(share).astype(int)
    order = np.lexsort((np.arange(len(classes)), -(share - quota)))
    quota[order[: k - quota.sum()]] += 1
    picks = [rng.choice(np.flatnonzero(inverse == c), q, replace=False)
             for c, q in enumerate(quota)]
    return np.sort(np.concatenate(picks))


def _subsample(x, y, k: int | None, seed: int, what: str, name: str):
    if k is None or k == len(y):
        return x, y
    if k > len(y):
        raise DataError(f"{what}: {k:,} requested, but the {name} {what[2:]} split has "
                        f"{len(y):,} samples")
    idx = _stratified(y, int(k), seed)
    return x[idx], y[idx]


def _hold_out(x, y, share: float, seed: int):
    """(x_train, y_train, x_val, y_val): a stratified share of the training split held out."""
    if not 0 < share < 1:
        raise ValueError(f"validation: must be in [0, 1), got {share!r}")
    val = _stratified(y, max(1, int(round(share * len(y)))), seed)
    keep = np.setdiff1d(np.arange(len(y)), val)
    return x[keep], y[keep], x[val], y[val]


def _keep_classes(x_tr, y_tr, x_te, y_te, classes, name: str):
    """The splits restricted to `classes` (relabelled 0..k-1 in sorted order) and the test
    samples of the other classes, with their original labels: (x_tr, y_tr, x_te, y_te, x_ood, y_ood)."""
    present = np.unique(np.concatenate([y_tr, y_te]))
    unknown = sorted(set(classes) - set(present.tolist()))
    if unknown:
        raise DataError(f"train_classes: class(es) {unknown} are not in {name} (its classes: "
                        f"{present.min()}..{present.max()})")
    keep = np.asarray(sorted(classes))
    relabel = np.full(present.max() + 1, -1, np.int64)
    relabel[keep] = np.arange(len(keep))
    train, test = np.isin(y_tr, keep), np.isin(y_te, keep)
    return (x_tr[train], relabel[y_tr[train]], x_te[test], relabel[y_te[test]], x_te[~test], y_te[~test])


def _fraction(x, y, fraction: float, seed: int, n_classes: int):
    """A stratified share `fraction` of the training split (seeded), at least one sample per class."""
    k = int(round(fraction * len(y)))
    idx = _stratified(y, k, seed) if k else np.zeros(0, int)
    if len(np.unique(y[idx])) < n_classes:
        raise DataError(f"train_fraction: {fraction:g} of the {len(y):,} training samples ({k}) leaves a class "
                        f"without samples ({n_classes} classes); use a larger fraction or n_train")
    return x[idx], y[idx]


def load(name: str, *, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
         path: str | Path | None = None, train_classes: list[int] | None = None,
         train_fraction: float = 1.0, validation: float = 0.0) -> Dataset:
    """Dataset `name` (one of NAMES). n_train / n_test subsample the splits, stratified,
    with `seed`; None keeps them whole. `path` (or LABPNN_DATA) is the folder of the IDX
    files of mnist and fashion-mnist: the files themselves, or a subfolder named after the
    dataset. Only the t10k files present: a fixed stratified 8,000 / 2,000 split.

    Then, in this order: `train_classes` keeps only those classes in both splits (relabelled
    0..k-1 in sorted order; n_classes = k); the subsampled test split's samples of the other
    classes become `x_ood` / `y_ood` (original labels). `train_fraction` (0 < f <= 1) keeps
    a stratified share of the training split, seeded with `seed`, at least one per class.
    First of all, `validation` (0 <= v < 1): a stratified, seeded share v of the training split
    is held out and becomes the test split (tuning: the real test split is not touched)."""
    if name not in NAMES:
        raise ValueError(f"name: unknown dataset {name!r}; one of {', '.join(NAMES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")
    for what, k in (("n_train", n_train), ("n_test", n_test)):
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"{what}: must be a positive integer or None, got {k!r}")
    if not 0 < train_fraction <= 1:
        raise ValueError(f"train_fraction: must be in (0, 1], got {train_fraction!r}")
    if train_classes is not None and len(set(train_classes)) < 2:
        raise ValueError(f"train_classes: at least 2 distinct classes are needed, got {train_classes!r}")
    if name == "mnist1d":
        x_tr, y_tr, x_te, y_te, meta = _load_mnist1d(n_train, n_test)
    elif name == "digits":
        x_tr, y_tr, x_te, y_te, meta = _load_digits()
    else:
        x_tr, y_tr, x_te, y_te, meta = _load_idx(name, path)
    x_tr, y_tr = _subsample(x_tr, y_tr, n_train, seed, "n_train", name)
    x_te, y_te = _subsample(x_te, y_te, n_test, seed, "n_test", name)
    if validation:
        x_tr, y_tr, x_te, y_te = _hold_out(x_tr, y_tr, validation, seed)
        meta["validation"] = float(validation)
    x_ood = y_ood = None
    if train_classes is not None:
        x_tr, y_tr, x_te, y_te, x_ood, y_ood = _keep_classes(x_tr, y_tr, x_te, y_te, train_classes, name)
        meta |= {"train_classes": sorted(set(int(c) for c in train_classes)),
                 "ood_classes": sorted(set(y_ood.tolist())), "n_ood": len(y_ood)}
    n_classes = len(set(train_classes)) if train_classes is not None else int(np.concatenate([y_tr, y_te]).max()) + 1
    if train_fraction < 1:
        x_tr, y_tr = _fraction(x_tr, y_tr, train_fraction, seed, n_classes)
        meta["train_fraction"] = float(train_fraction)
    meta |= {"seed": int(seed), "n_train": len(y_tr), "n_test": len(y_te)}
    return Dataset(name, np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_te), y_te,
                   n_classes, meta, None if x_ood is None else np.ascontiguousarray(x_ood), y_ood)
