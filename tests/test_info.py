"""The matrix-based Renyi entropy estimator: properties, exactness and gradients."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist

from labpnn import info

ALPHAS = [0.5, 1.0, 1.01, 2.0, 3.0]


def _renyi_ref(A: np.ndarray, alpha: float) -> float:
    """Independent reference: Renyi entropy (bits) of the eigenvalues of A / tr A."""
    lam = np.clip(np.linalg.eigvalsh(A / np.trace(A)), 0, None)
    lam = lam[lam > 1e-15]
    if alpha == 1:
        return float(-(lam * np.log2(lam)).sum())
    return float(np.log2((lam ** alpha).sum()) / (1 - alpha))


def _kernel(x, sigma=None):
    return info.normalize(info.gram(x, sigma))


@pytest.fixture
def x():
    return torch.randn(40, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_normalize_gives_unit_trace_and_constant_diagonal(x):
    A = _kernel(x, 1.3)
    assert torch.trace(A).item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(torch.diagonal(A), torch.full((40,), 1 / 40, dtype=torch.float64))
    assert torch.allclose(A, A.T)


def test_gram_is_the_gaussian_kernel(x):
    K = info.gram(x, 2.0)
    d2 = torch.cdist(x, x) ** 2
    assert torch.allclose(K, torch.exp(-d2 / 8.0), atol=1e-12)
    small = x[:6, :3].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: info.gram(t, 0.9), (small,))  # any G, symmetric or not


@pytest.mark.parametrize("alpha", ALPHAS)
def test_entropy_matches_reference_and_bounds(x, alpha):
    A = _kernel(x, 1.5)
    s = info.entropy(A, alpha).item()
    assert s == pytest.approx(_renyi_ref(A.numpy(), alpha), abs=1e-9)
    assert 0 <= s <= math.log2(40) + 1e-9


def test_alpha_two_fast_path_equals_eigenvalue_path(x):
    for sigma in (0.3, 1.0, 5.0):
        A = _kernel(x, sigma)
        assert info.entropy(A, 2.0).item() == pytest.approx(_renyi_ref(A.numpy(), 2.0), abs=1e-10)
        assert info.entropy(A, 2.0).item() == pytest.approx(info.entropy(A, 2.0 + 1e-9).item(),
                                                            abs=1e-6)


def test_entropy_extremes():
    same = torch.zeros(10, 3)     # float32: round-off eigenvalues ~1e-7 differ between CPUs
    assert info.entropy(_kernel(same), 1.01).item() == pytest.approx(0.0, abs=2e-5)
    assert info.entropy(_kernel(same).double(), 1.01).item() == pytest.approx(0.0, abs=1e-9)
    apart = torch.arange(10.0)[:, None] * 100
    assert info.entropy(_kernel(apart, 1.0), 1.01).item() == pytest.approx(math.log2(10), abs=1e-6)


def test_continuity_near_alpha_one(x):
    A = _kernel(x, 1.0)
    vn = info.entropy(A, 1.0).item()
    below, above = info.entropy(A, 1 - 1e-3).item(), info.entropy(A, 1 + 1e-3).item()
    assert below == pytest.approx(vn, abs=5e-3) and above == pytest.approx(vn, abs=5e-3)
    assert below > vn > above  # Renyi entropy decreases with alpha
    assert info.entropy(A, 1 + 1e-7).item() == pytest.approx(vn, abs=1e-5)


def test_label_entropy_is_renyi_of_class_frequencies():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 5, 5])
    p = np.array([3, 2, 1, 2]) / 8
    for alpha in ALPHAS:
        ref = -(p * np.log2(p)).sum() if alpha == 1 else np.log2((p ** alpha).sum()) / (1 - alpha)
        assert info.label_entropy(y, alpha).item() == pytest.approx(ref, abs=1e-12)
        A = info.normalize(info.label_gram(y, torch.float64))
        assert info.entropy(A, alpha).item() == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("alpha", [1.01, 2.0])
def test_block_label_joint_equals_full_joint(x, alpha):
    y = torch.arange(40) % 4
    A = _kernel(x, 1.0)
    full = info.joint_entropy(A, info.normalize(info.label_gram(y, torch.float64)), alpha)
    assert info.label_joint_entropy(A, y, alpha).item() == pytest.approx(full.item(), abs=1e-9)


def test_mutual_information_is_symmetric(x):
    z = x[:, :2] ** 2
    y = torch.arange(40) % 3
    assert info.mutual_information(x, z).item() == pytest.approx(
        info.mutual_information(z, x).item(), abs=1e-9)
    assert info.mutual_information(y, z).item() == pytest.approx(
        info.mutual_information(z, y).item(), abs=1e-6)


def test_joint_of_gaussian_kernels_is_the_kernel_of_the_combined_width(x):
    # exp(-d^2 / 2a^2) * exp(-d^2 / 2b^2) = exp(-d^2 / 2c^2) with 1/c^2 = 1/a^2 + 1/b^2
    joint = info.joint_entropy(_kernel(x, 1.0), _kernel(x, 2.0), 1.01).item()
    assert joint == pytest.approx(info.entropy(_kernel(x, 2 / math.sqrt(5)), 1.01).item(), abs=1e-9)
    assert joint >= info.entropy(_kernel(x, 1.0), 1.01).item()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 30), alpha=st.sampled_from(ALPHAS))
def test_mutual_information_is_invariant_to_permuting_samples_together(seed, n, alpha):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    z = x[:, :1] + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    mi = info.mutual_information(x, z, alpha)
    assert info.mutual_information(x[perm], z[perm], alpha).item() == pytest.approx(
        mi.item(), abs=1e-8)
    assert -1e-6 <= mi.item() <= math.log2(n) + 1e-6


def test_information_about_labels_rises_as_features_become_informative():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(120) % 3
    noise = torch.randn(120, 5, generator=g)
    onehot = torch.nn.functional.one_hot(y, 5).float()
    mis = [info.mutual_information(y, noise + t * onehot).item() for t in (0, 1, 2, 4, 8)]
    assert all(b > a for a, b in zip(mis, mis[1:]))
    assert mis[0] < 0.3 and mis[-1] > 0.9  # of log2(3) = 1.58


def test_default_sigma_is_the_median_pairwise_distance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(102, 7))  # an odd number of pairs: the median is one of them
    assert info.default_sigma(x) == pytest.approx(np.median(pdist(x)), rel=1e-9)
    big = rng.normal(size=(1019, 3))  # more than MAX_SIGMA_SAMPLES: every fourth sample
    assert info.default_sigma(big) == pytest.approx(np.median(pdist(big[::4])), rel=1e-6)
    assert info.default_sigma(np.zeros((5, 2))) == 1.0


def test_default_width_is_scale_free_in_value_and_gradient():
    g = torch.Generator().manual_seed(3)
    y = torch.arange(30) % 3
    z = torch.randn(30, 4, generator=g, dtype=torch.float64).requires_grad_()
    mi = info.mutual_information(y, z)
    (grad,) = torch.autograd.grad(mi, z)
    assert info.mutual_information(y, 7.0 * z.detach()).item() == pytest.approx(mi.item(), abs=1e-9)
    assert abs((grad * z).sum().item()) < 1e-9 * grad.norm().item() * z.norm().item() + 1e-12
    assert grad.norm().item() > 1e-3


@pytest.mark.parametrize("alpha", ALPHAS)
def test_gradient_matches_finite_differences(alpha):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    assert torch.autograd.gradcheck(lambda t: info.entropy(_kernel(t, 1.5), alpha), (x,))
    assert torch.autograd.gradcheck(
        lambda t: info.mutual_information(t, w, alpha, sigma_x=1.2, sigma_z=0.8), (x,))
    assert torch.autograd.gradcheck(
        lambda t: info.mutual_information(y, t, alpha, sigma_z=1.0), (x,))


def test_gradient_with_respect_to_the_matrix_matches_finite_differences():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    A = _kernel(x, 1.0).requires_grad_()
    for alpha in (0.7, 1.0, 1.5):
        assert torch.autograd.gradcheck(lambda a: info.entropy(a, alpha), (A,))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.01, 2.0])
def test_no_nan_gradient_on_degenerate_input(alpha):
    base = torch.randn(8, 3, generator=torch.Generator().manual_seed(6))
    duplicated = torch.cat([base, base, base[:2]]).requires_grad_()
    constant_feature = torch.cat([base[:, :2], torch.ones(8, 1)], 1).requires_grad_()
    identical = torch.ones(6, 3, requires_grad=True)
    for z in (duplicated, constant_feature, identical):
        y = torch.arange(z.shape[0]) % 2
        mi = info.mutual_information(y, z, alpha) + info.entropy(_kernel(z), alpha)
        (grad,) = torch.autograd.grad(mi, z)
        assert torch.isfinite(mi) and torch.isfinite(grad).all()


def test_numpy_input_gives_the_same_result_as_torch(x):
    y = np.arange(40) % 3
    assert info.mutual_information(y, x.numpy()).item() == pytest.approx(
        info.mutual_information(torch.from_numpy(y), x).item(), abs=1e-12)
    assert torch.is_tensor(info.gram(x.numpy(), 1.0))


@pytest.mark.parametrize("call, name", [
    (lambda: info.gram(torch.tensor([[0.0], [float("nan")]]), 1.0), "x"),
    (lambda: info.gram(torch.ones(1, 3), 1.0), "x"),
    (lambda: info.gram(torch.ones(4, 3), 0.0), "sigma"),
    (lambda: info.gram(torch.ones(4, 3), -1.0), "sigma"),
    (lambda: info.entropy(torch.eye(3) / 3, 0.0), "alpha"),
    (lambda: info.entropy(torch.eye(3) / 3, -2.0), "alpha"),
    (lambda: info.entropy(torch.ones(3, 4), 2.0), "A"),
    (lambda: info.entropy(torch.zeros(3, 3), 2.0), "A"),
    (lambda: info.joint_entropy(torch.eye(3), torch.eye(4)), "B"),
    (lambda: info.normalize(torch.zeros(3, 3)), "K"),
    (lambda: info.mutual_information(torch.randn(5, 2), torch.randn(6, 2)), "z"),
    (lambda: info.mutual_information(torch.randn(5, 2), torch.randn(5, 2), sigma_z=0), "sigma_z"),
    (lambda: info.mutual_information(torch.randn(5, 2), torch.randn(5, 2), alpha=0), "alpha"),
    (lambda: info.label_gram(torch.tensor([0.0, 1.0, 1.0])), "y"),
    (lambda: info.label_entropy(np.array([[0, 1], [1, 0]])), "y"),
    (lambda: info.label_joint_entropy(torch.eye(3) / 3, torch.tensor([0, 1])), "y"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        call()
