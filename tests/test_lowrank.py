"""The fast entropy estimator (labpnn.lowrank): exact when it sees every eigenpair, close to
the exact path otherwise, its bracket holding the exact value, plumbed into PIB."""

import pytest
import torch

from labpnn import info, lowrank
from labpnn.objectives import OBJECTIVES, ObjectiveContext
from labpnn.pib import PIBSettings, pib_terms


def _data(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.01, 3.0])
def test_fast_equals_exact_when_every_eigenpair_is_computed(alpha):
    x = _data(60, 5)
    values = []
    for est in ("exact", "fast"):
        xg = x.clone().requires_grad_()
        s = info.entropy(info.normalize(info.gram(xg, 1.5)), alpha, estimator=est)
        s.backward()
        values.append((s.item(), xg.grad))
    assert values[1][0] == pytest.approx(values[0][0], abs=1e-9)
    assert torch.allclose(values[1][1], values[0][1], atol=1e-9)


def test_fast_is_close_to_exact_and_its_bracket_holds(monkeypatch):
    monkeypatch.setattr(info, "FAST_RANK", 48)
    x = _data(400, 3, seed=1)           # low-dimensional data: a decaying spectrum
    A = info.normalize(info.gram(x))
    for alpha in (1.01, 2.5):
        exact = info.entropy(A, alpha).item()
        fast = info.entropy(A, alpha, estimator="fast").item()
        assert fast == pytest.approx(exact, rel=1e-3)
        lam = torch.linalg.eigvalsh(A).clamp_min(0)
        total = (lam ** alpha).sum().item()
        est, _, _ = lowrank.spectral_sum([A], alpha, 48)
        assert 0 < est.half_width < 1e-3 * abs(1 - total)
        # the bracket bounds the tail's model; the computed eigenvalues, the kept ones and
        # eigvalsh's, each carry float64 round-off of about n eps (|A| <= 1): 2.8e-13 past a
        # half width of 1e-12 at alpha 2.5 on one CPU (AMD EPYC), within it on another
        roundoff = 2 * 48 * A.shape[0] * torch.finfo(torch.float64).eps
        assert abs(est.value.item() - total) <= est.half_width + roundoff


def test_fast_mutual_information_and_gradient_follow_the_exact_path(monkeypatch):
    monkeypatch.setattr(info, "FAST_RANK", 48)
    x, z = _data(300, 3, seed=2), _data(300, 2, seed=3)
    z = torch.cat([z, x[:, :1]], 1)     # shares one coordinate with x
    y = (x[:, 0] > 0).long()
    for a in (x, y):
        out = []
        for est in ("exact", "fast"):
            zg = z.clone().requires_grad_()
            mi = info.mutual_information(a, zg, 1.01, estimator=est)
            mi.backward()
            out.append((mi.item(), zg.grad.reshape(-1)))
        assert out[1][0] == pytest.approx(out[0][0], rel=0.01)
        assert torch.nn.functional.cosine_similarity(out[0][1], out[1][1], 0) > 0.99


def test_estimator_setting_reaches_the_pib_objective():
    assert PIBSettings().estimator == "exact"
    ctx = ObjectiveContext(0, 4, 4, 2, PIBSettings(estimator="fast"), 0)
    assert OBJECTIVES.build("pib", "objective", ctx).estimator == "fast"
    assert OBJECTIVES.build({"name": "pib", "estimator": "exact"}, "objective", ctx).estimator == "exact"
    with pytest.raises(ValueError, match="estimator"):
        PIBSettings(estimator="approximate")


def test_unknown_estimator_is_refused_naming_it():
    x = _data(20, 2)
    with pytest.raises(ValueError, match="estimator.*'quick'"):
        info.entropy(info.normalize(info.gram(x)), 1.01, estimator="quick")
    with pytest.raises(ValueError, match="estimator"):
        pib_terms(x, (x[:, 0] > 0).long(), x, beta=0.1, estimator="quick")


@pytest.mark.parametrize("alpha", [1.0, 1.01, 2.5])
def test_tail_model_is_exact_for_a_flat_tail_and_inside_the_bracket(alpha):
    g, m = lowrank.power(alpha), 50
    flat = torch.full((m,), 2e-3, dtype=torch.float64)
    value = lowrank.tail_model(alpha, m, flat.sum(), (flat ** 2).sum())
    assert value.item() == pytest.approx(g(flat).sum().item(), rel=1e-5)  # shape capped at 1e6
    spread = torch.linspace(1e-4, 4e-3, m, dtype=torch.float64)
    tau, tau2 = spread.sum(), (spread ** 2).sum()
    lo, hi = sorted(v.item() for v in lowrank._tail_bracket(g, m, tau, tau2, spread.max()))
    assert lo <= lowrank.tail_model(alpha, m, tau, tau2).item() <= hi
    assert lo <= g(spread).sum().item() <= hi


def test_the_joint_starts_from_its_factors_vectors(monkeypatch):
    """The joint kernel's top pairs come from one Nystrom step on products of the factors'
    Ritz vectors: its entropy is closer to the exact one than from a random sketch with two
    power steps. (At this rank the gamma tail itself errs by 1.1e-3 relative, measured with
    the exact top eigenvalues.)"""
    monkeypatch.setattr(info, "FAST_RANK", 24)
    x, z = _data(200, 3, seed=4), _data(200, 4, seed=5)
    A, B = info.gram(x), info.gram(z)
    exact = info.joint_entropy(A, B, 1.01).item()
    fast = info.joint_entropy(A, B, 1.01, estimator="fast").item()
    alone = info._fast_entropy([A * B], 1.01, 48)[0].item()
    assert fast == pytest.approx(exact, rel=1e-3)
    assert abs(fast - exact) < abs(alone - exact)


def test_product_start_holds_the_products_of_the_largest_pairs():
    va, vb = torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64).flip(1)
    la = torch.tensor([0.1, 0.2, 0.3, 4.0], dtype=torch.float64)
    lb = torch.tensor([0.5, 0.6, 0.7, 2.0], dtype=torch.float64)
    start = lowrank.product_start((la, va), (lb, vb), 3)
    # the largest products: 4 * 2 (columns 3, 3), 4 * 0.7 (3, 2), 4 * 0.6 (3, 1)
    expected = torch.stack([va[:, 3] * vb[:, 3], va[:, 3] * vb[:, 2], va[:, 3] * vb[:, 1]], 1)
    assert torch.equal(start, expected)


@pytest.mark.parametrize("n", [50, 400])
def test_the_sketch_is_a_product_with_a_sparse_sign_matrix_hitting_every_sample(n):
    A = info.gram(_data(n, 3, seed=6))
    cols, rows, signs = lowrank._sketch_pattern(n, 7, 0)
    omega = torch.zeros(n, 7, dtype=A.dtype)
    omega.index_put_((rows, cols), signs.to(A.dtype), accumulate=True)
    assert (omega != 0).any(1).all()
    assert (omega != 0).sum(0).min() >= min(lowrank.SKETCH_NONZEROS, n // 7)
    assert torch.allclose(lowrank._sketch(A, 7, 0), A @ omega, atol=1e-12)


def test_orthonormal_spans_its_input_and_survives_rank_deficiency():
    y = _data(40, 6, seed=7)
    for cols in (y, torch.cat([y, y[:, :2]], 1)):  # the second: Cholesky QR fails, Householder
        q = lowrank._orthonormal(cols)
        assert torch.allclose(q.T @ q, torch.eye(q.shape[1], dtype=q.dtype), atol=1e-8)
        assert torch.allclose(q @ (q.T @ y), y, atol=1e-8)  # y lies in the span



def test_an_isolated_sample_is_found_whatever_the_seed():
    """An isolated sample is an eigenvector by itself (eigenvalue 1 of K): every sample
    enters the sketch, so the top pairs hold it."""
    x = torch.cat([_data(300, 3, seed=9), torch.full((1, 3), 50.0, dtype=torch.float64)])
    K = info.gram(x, 5.0)       # the bulk's spectrum falls fast: eigenvalue 1 is in the top
    for seed in range(5):
        lam, _ = lowrank._ritz_pairs(K, 32, seed, None)
        assert (lam - 1.0).abs().min() < 1e-6


def test_a_tail_whose_sum_of_squares_rounds_away_still_counts():
    """Exact top pairs (a diagonal float32 block) and a flat tail far below round-off in the
    sum of squares: the tail's mass is still counted (as a flat tail)."""
    lam = torch.cat([torch.logspace(0, -2, 40), torch.full((360,), 1e-5)])
    exact = info.entropy(torch.diag(lam.double()), 1.01).item()
    top = [torch.eye(400)[:, :48]]          # the exact top eigenvectors as the start
    est, _, _ = lowrank.spectral_sum([torch.diag(lam)], 1.01, 40, start=top)
    assert (torch.log2(est.value) / (1 - 1.01)).item() == pytest.approx(exact, rel=1e-4)
