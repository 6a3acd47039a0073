"""Unsupervised PIB's parts without the engine: augmentations, the pib-2view objective, the
linear probe and the 2-D map."""

from __future__ import annotations

import importlib.util
import numpy as np
import pytest
import torch

from labpnn import augment, data, embedding, info, views
from labpnn.errors import ConfigError
from labpnn.linear_eval import linear_probe
from labpnn.objectives.two_view import TwoViewPIB, two_view_terms
from labpnn.protocols import Batch, Objective

IMAGE_AUGMENTS = [{"name": "shift", "pixels": 1}, {"name": "crop", "min_scale": 0.8},
                  {"name": "rotate", "degrees": 10}, {"name": "pixel_noise", "std": 0.05}]
SIGNAL_AUGMENTS = [{"name": "signal_shift", "samples": 3}, {"name": "signal_scale", "amount": 0.2},
                   {"name": "signal_noise", "iid": 0.1, "correlated": 0.1}]


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_views_are_seeded_and_differ(digits):
    pipe = augment.parse_pipeline(IMAGE_AUGMENTS, "digits")
    v1, again, v2 = pipe(digits.x_train, 3, 1), pipe(digits.x_train, 3, 1), pipe(digits.x_train, 3, 2)
    assert v1.shape == digits.x_train.shape and v1.dtype == np.float32
    np.testing.assert_array_equal(v1, again)
    assert np.abs(v1 - v2).mean() > 0.05
    assert v1.min() >= 0 and v1.max() <= 1


def test_shift_moves_whole_pixels():
    image = np.zeros((50, 64), np.float32)
    image[:, 3 * 8 + 4] = 1.0
    moved = augment.parse_pipeline([{"name": "shift", "pixels": 2}], "digits")(image, 0, 0)
    np.testing.assert_allclose(moved.max(1), 1.0, atol=1e-6)  # one pixel, whole
    rows, cols = np.divmod(moved.argmax(1), 8)
    assert set(rows - 3) <= set(range(-2, 3)) and set(cols - 4) <= set(range(-2, 3))
    assert len(set(zip(rows, cols))) > 5


def test_signal_augmentations_keep_the_shape():
    x = np.random.default_rng(0).normal(size=(20, 40)).astype(np.float32)
    pipe = augment.parse_pipeline(SIGNAL_AUGMENTS, "mnist1d")
    out = pipe(x, 0, 1)
    assert out.shape == x.shape and not np.allclose(out, x)
    shifted = augment.parse_pipeline([{"name": "signal_shift", "samples": 2}], "mnist1d")(x, 0, 0)
    assert all(any(np.allclose(s, np.roll(r, k)) for k in range(-2, 3)) for s, r in zip(shifted, x))


@pytest.mark.parametrize("entries, dataset, says", [
    ([{"name": "rotat"}], "digits", "augment.0.name: unknown augmentation 'rotat'"),
    ([{"name": "shift"}, {"name": "rotate", "degrees": 90}], "digits", "augment.1.degrees"),
    ([{"name": "pixel_noise", "std": -1}], "mnist", "augment.0.std"),
    ([{"name": "signal_shift"}], "digits", "augment.0.name: 'signal_shift' applies to signals"),
    ([{"name": "shift"}], "mnist1d", "for signals use: signal_shift"),
    ([{"name": "shift", "px": 1}], "digits", "augment.0.px: unknown key"),
    (["shift"], "digits", "augment.0: expected a mapping"),
    ([{"name": "stroke", "amount": 1.5}], "digits", "augment.0.amount"),
    ([{"name": "elastic", "sigma": 0}], "mnist", "augment.0.sigma"),
    ([{"name": "stroke"}], "mnist1d", "augment.0.name: 'stroke' applies to images"),
])
def test_bad_augmentations_name_the_field(entries, dataset, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        augment.parse_pipeline(entries, dataset)


def test_stroke_thickens_or_thins_and_elastic_bends(digits):
    x = digits.x_train[:200]
    thick = augment.parse_pipeline([{"name": "stroke", "amount": 1.0}], "digits")(x, 0, 1)
    ink = thick.sum(1) / x.sum(1)
    assert ink.min() < 0.8 and ink.max() > 1.2  # eroded and dilated images both
    assert thick.min() >= 0 and thick.max() <= 1
    np.testing.assert_allclose(augment.parse_pipeline([{"name": "stroke", "amount": 0}], "digits")(x, 0, 1), x)
    bent = augment.parse_pipeline([{"name": "elastic", "alpha": 8, "sigma": 2}], "digits")(x, 0, 1)
    assert bent.shape == x.shape and 0.02 < np.abs(bent - x).mean()
    np.testing.assert_allclose(augment.parse_pipeline([{"name": "elastic", "alpha": 0}], "digits")(x, 0, 1), x,
                               atol=1e-5)


def test_the_view_pool_pairs_two_distinct_draws_of_each_row():
    rows, draws = 50, 4
    x = [np.full((rows, 3), v, np.float32) + np.arange(rows, dtype=np.float32)[:, None] * 10 for v in range(draws)]
    h = [v[:, :2] for v in x]
    sample = views.pair_sampler(x, h, 20, seed=3)
    batch, again = sample(5), sample(5)
    torch.testing.assert_close(batch.x, again.x)
    first, second = batch.x[:, 0] % 10, batch.targets["x2"][:, 0] % 10  # which draw
    assert torch.equal(batch.x[:, 0] // 10, batch.targets["x2"][:, 0] // 10)  # the same row
    assert (first != second).all() and len(set(first.tolist()) | set(second.tolist())) == draws
    torch.testing.assert_close(batch.h, batch.x[:, :2])
    torch.testing.assert_close(batch.targets["h2"], batch.targets["x2"][:, :2])
    with pytest.raises(ValueError, match="views: need the same number"):
        views.pair_sampler(x[:1], h[:1], 20, seed=3)


def test_a_user_registers_an_augmentation(monkeypatch):
    class Flip(augment.Strengths):
        p: float = 1.0

    monkeypatch.setitem(augment.AUGMENTATIONS, "flip", None)  # restored after the test
    augment.register_augmentation("flip", "image", Flip, lambda x, o, rng: x.reshape(len(x), 8, 8)[:, :, ::-1]
                                  .reshape(len(x), -1))
    image = np.arange(128, dtype=np.float32).reshape(2, 64)
    out = augment.parse_pipeline([{"name": "flip"}], "digits")(image, 0, 0)
    np.testing.assert_array_equal(out[0, :8], image[0, 7::-1])


def test_shared_features_carry_more_view_information():
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(64, 20, generator=g)
    x2 = x1 + 0.05 * torch.randn(64, 20, generator=g)
    shared = two_view_terms(x1, x2, x1[:, :5], x2[:, :5], beta=0.0)
    unrelated = two_view_terms(x1, x2, x1[:, :5], torch.rand(64, 5, generator=g), beta=0.0)
    assert shared.i_z1z2 > 2 * unrelated.i_z1z2
    compressed = two_view_terms(x1, x2, x1[:, :5], x2[:, :5], beta=0.5)
    assert compressed.objective == pytest.approx(
        float(shared.i_z1z2 - 0.5 * (compressed.i_x1z1 + compressed.i_x2z2)), rel=1e-5)


def test_keep_rewards_what_the_features_keep_of_their_inputs():
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(64, 20, generator=g)
    x2 = x1 + 0.05 * torch.randn(64, 20, generator=g)
    z1, z2 = x1[:, :5], x2[:, :5]
    plain = two_view_terms(x1, x2, z1, z2, beta=0.01)
    kept = two_view_terms(x1, x2, z1, z2, beta=0.01, keep=1.0)
    assert kept.objective == pytest.approx(float(plain.i_z1z2 + 0.99 * (plain.i_x1z1 + plain.i_x2z2)), rel=1e-5)
    assert kept.objective > plain.objective + 1  # bits: the inputs' terms count as a reward
    with pytest.raises(ValueError, match="keep: must be finite and >= 0"):
        two_view_terms(x1, x2, z1, z2, beta=0.01, keep=-1.0)


def test_a_knn_width_lifts_the_cap_of_the_median_width():
    """Views that agree on which of 16 tight clusters a sample is in: under the median width
    most pairs (of different clusters) keep exp(-1/2), which caps I(Z1;Z2) near 2 bits; the knn
    width is set by the near (same-cluster) pairs, so the clusters count in full (log2 16 = 4)."""
    g = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(16, 8, generator=g)
    cluster = torch.arange(128) % 16
    z1, z2 = (centres[cluster] + 0.05 * torch.randn(128, 8, generator=g) for _ in range(2))
    x = torch.rand(128, 20, generator=g)
    median = two_view_terms(x, x, z1, z2, beta=0.0).i_z1z2
    knn = two_view_terms(x, x, z1, z2, beta=0.0, width_z=info.Width("knn", k=7)).i_z1z2
    assert median < 2.6 and knn > 3.5
    unrelated = two_view_terms(x, x, z1, z2[torch.randperm(128, generator=g)], beta=0.0,
                               width_z=info.Width("knn", k=7)).i_z1z2
    assert unrelated < knn - 1


def test_the_objective_trains_without_labels(digits):
    pipe = augment.parse_pipeline(IMAGE_AUGMENTS, "digits")
    x1, x2 = (torch.from_numpy(pipe(digits.x_train, 0, v)) for v in (1, 2))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU())
    objective = TwoViewPIB(beta=0.01)
    assert isinstance(objective, Objective) and objective.needs == {"x2", "h2"}
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    shared = []
    for _ in range(40):
        idx = torch.from_numpy(rng.choice(len(x1), 128, replace=False))
        batch = Batch(x1[idx], x1[idx], {"x2": x2[idx], "h2": x2[idx]})
        loss, values = objective.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        shared.append(values["I_Z1Z2"])
        assert set(values) == {"I_Z1Z2", "I_XZ"}
    assert np.mean(shared[-5:]) > np.mean(shared[:5]) + 0.1  # bits


def test_linear_probe_reads_linear_structure():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    f = rng.normal(size=(300, 5)) + 4 * np.eye(3, 5)[y]
    assert linear_probe(f[:200], y[:200], f[200:], y[200:]) > 0.95
    assert linear_probe(rng.normal(size=(200, 5)), y[:200], f[200:], y[200:]) < 0.6


def test_embedding_falls_back_to_tsne_without_umap(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else real(name, *a))
    assert embedding.available_method("auto") == "tsne"
    with pytest.raises(ValueError, match="pip install 'labpnn\\[umap\\]'"):
        embedding.available_method("umap")


def test_embedding_keeps_clusters_apart(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    f = rng.normal(size=(80, 6)) + 6 * y[:, None]
    coords, used = embedding.embed(f, "pca")
    assert used == "pca" and coords.shape == (80, 2)
    gap = np.linalg.norm(coords[y == 0].mean(0) - coords[y == 1].mean(0))
    assert gap > 3 * coords[y == 0].std(0).max()
    png = embedding.save_png(coords, y, tmp_path / "map.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="method: one of"):
        embedding.embed(f, "isomap")
