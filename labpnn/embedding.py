"""A 2-D map of features, coloured by label: UMAP (umap-learn, the optional extra `umap`) when
installed, else scikit-learn's t-SNE; PCA on request (instant, linear). docs/unsupervised.md.

`run_map` maps the measured test features of a run file's unit (the GUI's feature map, the
benchmark's PNG); the labels come from the run's dataset, loaded again as its recipe says."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.preprocessing import StandardScaler

from labpnn import data
from labpnn.errors import DataError
from labpnn.runlog import RunReader

Method = Literal["auto", "umap", "tsne", "pca"]
METHODS = ("auto", "umap", "tsne", "pca")


def available_method(method: Method = "auto") -> str:
    """The method `method` resolves to: "auto" is umap when umap-learn is installed, else tsne."""
    if method not in METHODS:
        raise ValueError(f"method: one of {', '.join(METHODS)}, got {method!r}")
    has_umap = importlib.util.find_spec("umap") is not None
    if method == "umap" and not has_umap:
        raise ValueError("method: 'umap' needs umap-learn (pip install 'labpnn[umap]'); 'auto' falls back to t-SNE")
    if method == "auto":
        return "umap" if has_umap else "tsne"
    return method


def embed(features: np.ndarray, method: Method = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """(coordinates (n, 2) float32, the method used) of standardised features (n, d)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 5:
        raise ValueError(f"features: need a (n >= 5, d) array, got shape {f.shape}")
    used = available_method(method)
    f = StandardScaler().fit_transform(f)
    if used == "umap":
        import umap

        coords = umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(f)
    elif used == "tsne":
        from sklearn.manifold import TSNE

        coords = TSNE(n_components=2, random_state=seed, init="pca",
                      perplexity=min(30.0, (len(f) - 1) / 3)).fit_transform(f)
    else:
        from sklearn.decomposition import PCA

        coords = PCA(n_components=2, random_state=seed).fit_transform(f)
    return np.asarray(coords, np.float32), used


def save_png(coords: np.ndarray, labels: np.ndarray, path: str | Path, title: str) -> Path:
    """A scatter of coords coloured by label (tab10 legend) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=120)
    for c in np.unique(labels):
        pts = coords[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=4, color=plt.cm.tab10(int(c) % 10), label=str(c), alpha=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=7, loc="best", title="label", title_fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run_map(path: str | Path, unit: int | None = None, method: Method = "auto",
            seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(coordinates, test labels, a title) of the measured test features of unit `unit` (None:
    the last) of a run file. A DataError when the file holds no such features yet."""
    with RunReader(path) as reader:
        units = reader.units
        view = units[-1 if unit is None else unit]
        features = view.features("test")
        recipe, meta = reader.recipe, reader.provenance.get("dataset", {})
        name = f"{view.name} ({view.kind})"
    if features is None or not np.isfinite(features).all():
        raise DataError(f"{path}: {name} has no measured test features yet")
    spec = recipe["dataset"]
    ds = data.load(spec["name"], n_train=spec.get("n_train"), n_test=spec.get("n_test"), seed=spec.get("seed", 0),
                   path=spec.get("path") or meta.get("folder"))
    if len(ds.y_test) != len(features):
        raise DataError(f"{path}: {len(features)} test features, but its dataset {spec['name']!r} has "
                        f"{len(ds.y_test)} test samples")
    coords, used = embed(features, method, seed)
    return coords, ds.y_test, f"{recipe.get('name', '?')}: {name}, test set, {used.upper()}"
