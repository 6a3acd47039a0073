"""A 2-D map of features, coloured by label: UMAP (umap-learn, the optional extra `umap`) when
installed, else scikit-learn's t-SNE; PCA on request (instant, linear). docs/unsupervised.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.preprocessing import StandardScaler

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
