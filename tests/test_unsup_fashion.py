"""Fashion-MNIST in the unsupervised benchmark: the three-group probe, on a synthetic IDX folder."""

import sys
from pathlib import Path

import numpy as np
import pytest

from labpnn.linear_eval import FASHION_GROUPS, group_probe, linear_probe
from test_data import idx_bytes, write

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_unsup  # noqa: E402

GROUP_OF = {c: k for k, classes in enumerate(FASHION_GROUPS.values()) for c in classes}


def grouped_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose group (not class) is a bright block in one of three places; dress (3)
    and bag (8) look like footwear, so counting them would cost the group probe accuracy."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        k = GROUP_OF.get(int(c), 2)
        images[i, 9 * k:9 * k + 9, :] = 255
    return images, labels


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion")
    images, labels = grouped_images(200, 0)
    write(folder / "t10k-images-idx3-ubyte", idx_bytes(images))
    write(folder / "t10k-labels-idx1-ubyte", idx_bytes(labels))
    return folder


def test_group_probe_scores_groups_and_leaves_out_dress_and_bag():
    images, labels = grouped_images(400, 1)
    x = images.reshape(len(images), -1).astype(np.float64) / 255
    tr, te = slice(0, 300), slice(300, None)
    assert group_probe(x[tr], labels[tr], x[te], labels[te]) == 1.0
    # within a group the classes look alike: the 10-class probe cannot tell them apart
    assert linear_probe(x[tr], labels[tr], x[te], labels[te]) < 0.6
    # counted as a fourth group, dress and bag (drawn as footwear) would be confused
    assert group_probe(x[tr], labels[tr], x[te], labels[te], {**FASHION_GROUPS, "other": (3, 8)}) < 0.95


def test_bench_runs_fashion_with_the_three_group_probe(fashion_dir, tmp_path):
    base = bench_unsup.baselines("unsup-mnist-memristor", fashion_dir, "fashion-mnist")
    assert base["dataset"]["folder"] == str(fashion_dir.resolve())
    assert base["raw_groups"] == 1.0 and base["raw"] < 0.6
    results = [bench_unsup.job(("fashion", "unsup-mnist-memristor", 0, steps, fashion_dir, tmp_path))
               for steps in (0, 1)]
    for r in results:
        assert 0.0 <= r["probe"] <= 1.0 and 0.0 <= r["groups"] <= 1.0
    assert "readout" in results[1] and Path(results[1]["file"]).is_file()
    table = "\n".join(bench_unsup.fashion_lines(results, base, 1))
    assert "| random deployed units |" in table and "| unsupervised PIB, 1 iterations |" in table
    assert "| raw inputs (784 pixels) | " in table and "| 100.0 |" in table
    assert "upper-body clothes: 0, 2, 4, 6" in table
