"""Matrix-based Renyi alpha-entropy and mutual information (Sanchez Giraldo, Rao &
Principe 2015), differentiable in torch. Entropies are in bits.

Samples are rows: x has shape (n, ...) and is flattened to (n, d). A 1-D integer
vector is a vector of class labels and gets the one-hot kernel (1 where two samples
share a class). The formulas and the kernel-width rule are in docs/information.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from labpnn import lowrank

__all__ = ["WIDTH_RULES", "Width", "default_sigma", "kernel_width", "entropy", "gram", "joint_entropy", "label_entropy", "label_gram",
           "label_joint_entropy", "mutual_information", "normalize"]

LN2 = math.log(2.0)
VN_BAND = 1e-6          # |alpha - 1| below this uses the von Neumann limit
ESTIMATORS = ("exact", "fast")
FAST_RANK = 160         # eigenpairs the fast estimator computes per matrix (or class block);
                        # twice as many for a joint (Hadamard) kernel, whose top spectrum holds
                        # both factors' (docs/information.md)
MAX_SIGMA_SAMPLES = 256   # the median looks at most at this many (evenly strided) samples
CHUNK = 256             # rows per block where n x n work is done in blocks


# -- validation ---------------------------------------------------------------------------

def _tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray) and not (x.flags.writeable and x.dtype.isnative):
        x = x.astype(x.dtype.newbyteorder("="))  # torch wants writeable, native-order arrays
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}: cannot be read as a numeric array ({exc})") from None
    if t.is_complex():
        raise ValueError(f"{name}: must be real, got {t.dtype}")
    if t.ndim < 1 or t.shape[0] < 2:
        raise ValueError(f"{name}: needs at least 2 samples (rows), got shape {tuple(t.shape)}")
    return t


def _check_finite(t: torch.Tensor, name: str) -> None:
    # a finite sum proves every entry finite, far faster than isfinite().all()
    if not torch.isfinite(t.detach().sum()) and not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or infinite values")


def _is_labels(t: torch.Tensor) -> bool:
    return t.ndim == 1 and not t.is_floating_point() and t.dtype != torch.bool


def _samples(x, name: str) -> torch.Tensor:
    """x as a finite floating (n, d) tensor."""
    t = _tensor(x, name)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    t = t.reshape(t.shape[0], -1)
    if t.shape[1] == 0:
        raise ValueError(f"{name}: samples have no features, shape {tuple(t.shape)}")
    _check_finite(t, name)
    return t


def _labels(y, name: str) -> torch.Tensor:
    t = _tensor(y, name)
    if not _is_labels(t):
        raise ValueError(f"{name}: labels must be a 1-D integer vector, got {t.dtype} "
                         f"with shape {tuple(t.shape)}")
    return t


def _square(A, name: str) -> torch.Tensor:
    t = _tensor(A, name)
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"{name}: must be a square matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    _check_finite(t, name)
    return t


def _positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: must be finite and > 0, got {value!r}")
    return v


def _same_n(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_b}: has {b.shape[0]} samples but {name_a} has {a.shape[0]}")


# -- kernels ------------------------------------------------------------------------------

@torch.no_grad()
def _sq_distances(u: torch.Tensor, centred: bool = False) -> torch.Tensor:
    """Squared distances between the rows of u (n, d): a new (n, n) tensor, zero diagonal.
    centred: u's columns already have mean 0 (else a centred copy is made)."""
    if not centred:
        u = u - u.mean(0)  # centring reduces cancellation in |a|^2 + |b|^2 - 2ab
    sq = u.pow(2).sum(1)
    d2 = (u @ u.T).mul_(-2.0).add_(sq[:, None]).add_(sq[None, :]).clamp_min_(0.0)
    return _mirror_upper(d2).fill_diagonal_(0.0)


def _mirror_upper(m: torch.Tensor) -> torch.Tensor:
    """m with its lower triangle replaced by the upper one's transpose, in place and in row
    chunks: exactly symmetric, so the kernels built on it need no symmetrised copy."""
    for r in range(CHUNK, m.shape[0], CHUNK):
        m[r:r + CHUNK, :r] = m[:r, r:r + CHUNK].T
    for r in range(0, m.shape[0], CHUNK):  # the diagonal blocks
        blk = m[r:r + CHUNK, r:r + CHUNK]
        blk.copy_(torch.triu(blk) + torch.triu(blk, 1).T)
    return m


@torch.no_grad()
def _median_rule(d2: torch.Tensor) -> float:
    """The median pairwise distance, from squared distances d2 (n, n) with a zero
    diagonal, over at most MAX_SIGMA_SAMPLES evenly strided samples."""
    stride = -(-d2.shape[0] // MAX_SIGMA_SAMPLES)
    flat = d2[::stride, ::stride].reshape(-1).cpu().numpy()
    n = -(-d2.shape[0] // stride)
    # n zeros, then every pair twice: the (lower) median pair is at 0-based index n + 2r - 1
    k = n + 2 * ((n * (n - 1) // 2 + 1) // 2) - 1
    med = float(np.partition(flat, k)[k])  # faster than torch's kthvalue
    if med == 0.0:  # most pairs are duplicates: use the distinct ones
        nonzero = flat[flat > 0]
        med = float(np.median(nonzero)) if nonzero.size else 1.0
    return math.sqrt(med)


WIDTH_RULES = ("median", "class", "knn")


@dataclass(frozen=True)
class Width:
    """How a Gaussian kernel's width is chosen from the samples in hand (docs/pib-tuning.md):

    - "median": the median pairwise distance (the default, default_sigma);
    - "class": the median distance between samples of the same class (needs labels): the
      typical same-class pair sits at exp(-1/2) and pairs of different classes, farther apart,
      fall towards 0, so a class-clustered Z scores close to H(Y) (under the median width it
      cannot: most pairs are of different classes and set the width);
    - "knn": the median over samples of the distance to the k-th nearest neighbour (no labels).

    Every rule is then guarded, sigma >= floor * median, so collapsed clusters (width 0) or
    duplicated samples cannot isolate every sample, and multiplied by `scale`. A rule's width
    is tied to the samples' own distances, so spreading every sample away from every other
    (the isolation optimum of a fixed narrow width) changes nothing: all pairs at one distance
    give every pair the same kernel value, exp(-1/2) at most for the rules' own pairs.
    """

    rule: str = "median"
    scale: float = 1.0
    k: int = 10
    floor: float = 0.1

    def __post_init__(self):
        if self.rule not in WIDTH_RULES:
            raise ValueError(f"width: rule must be one of {', '.join(WIDTH_RULES)}, got {self.rule!r}")
        _positive(self.scale, "width: scale")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"width: k must be an integer >= 1, got {self.k!r}")
        f = float(self.floor)
        if not (math.isfinite(f) and 0 <= f <= 1):
            raise ValueError(f"width: floor must be in [0, 1], got {self.floor!r}")

    @property
    def is_median(self) -> bool:
        return self.rule == "median" and self.scale == 1.0


@torch.no_grad()
def _rule_sigma(d2: torch.Tensor, width: Width, y: torch.Tensor | None) -> float:
    """The width `width` gives samples with squared distances d2 (n, n; zero diagonal) and
    labels y (n,) or None, over at most MAX_SIGMA_SAMPLES evenly strided samples."""
    median = _median_rule(d2)
    if width.rule == "median":
        return width.scale * median
    stride = -(-d2.shape[0] // MAX_SIGMA_SAMPLES)
    d2s = d2[::stride, ::stride]
    n = d2s.shape[0]
    if width.rule == "class":
        if y is None:
            raise ValueError("width: rule 'class' needs the labels of the samples")
        ys = y[::stride].to(d2s.device)
        same = (ys[:, None] == ys[None, :]).triu_(1)
        pairs = d2s[same]
        sigma = math.sqrt(float(pairs.median())) if pairs.numel() else median
    else:  # knn: column 0 of the sorted row is the sample itself (distance 0)
        kth = torch.kthvalue(d2s, min(width.k, n - 1) + 1, dim=1).values
        sigma = math.sqrt(float(kth.median()))
    return width.scale * max(sigma, width.floor * median)


def kernel_width(x, width: Width = Width(), y=None) -> float:
    """The Gaussian kernel width `width` chooses for samples x (n, ...), with labels y (n,)
    for the rule "class"; default_sigma for the default Width()."""
    t = _samples(x, "x").detach()
    yt = None if y is None else _labels(y, "y")
    if yt is not None:
        _same_n(t, yt, "x", "y")
    return _rule_sigma(_sq_distances(t), width, yt)


def default_sigma(x) -> float:
    """The default Gaussian kernel width of samples x: the median pairwise Euclidean
    distance (the median heuristic).

    The median follows the features' scale and dimension (distances grow as sqrt(d)),
    so the kernel at the typical pair is exp(-1/2) whatever d, and no entropy saturates
    at log2 n (as with Silverman-type widths, far too narrow in 100+ dimensions). In PIB
    training on MNIST-1D it gave the best features of the widths tried (0.35 to 2 times
    the median). Uses at most MAX_SIGMA_SAMPLES evenly strided samples; all samples
    identical gives 1.0 (any width then gives the same kernel). Computed without
    gradient; see gram() for how kernels with this width are differentiated.
    """
    t = _samples(x, "x").detach()
    return _median_rule(_sq_distances(t[:: -(-t.shape[0] // MAX_SIGMA_SAMPLES)]))


class _GaussianGram(torch.autograd.Function):
    """K = exp(-c |u_i - u_j|^2), c = 1 / (2 sigma^2); c None: sigma by the median rule; c a
    callable: sigma = c(squared distances).
    c is a constant for the gradient: dL/du = -2c (diag(S 1) u - S u), S = (G + G^T) o K
    (translation-invariant: computed on centred u). centred: u's columns have mean 0."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, c: float | None, centred: bool = False) -> torch.Tensor:
        d2 = _sq_distances(u, centred)
        if c is None:
            c = 0.5 / _median_rule(d2) ** 2
        elif callable(c):
            c = 0.5 / c(d2) ** 2
        k = d2.mul_(-c).exp_()
        ctx.c, ctx.centred = c, centred
        ctx.save_for_backward(u, k)
        return k

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u, k = ctx.saved_tensors
        if not ctx.centred:
            u = u - u.mean(0)
        m = grad * k
        su = torch.addmm(m.T @ u, m, u)
        return su.sub_((m.sum(0) + m.sum(1))[:, None] * u).mul_(2.0 * ctx.c), None, None


def _gaussian(t: torch.Tensor, sigma, name: str, width: Width | None = None,
              y: torch.Tensor | None = None) -> torch.Tensor:
    """The Gaussian kernel of t: with the fixed width sigma, else by `width`'s rule (labels y
    for "class"), scale-free in gradient (gram())."""
    if sigma is not None:
        s = _positive(sigma, name)
        return _GaussianGram.apply(t, 0.5 / (s * s))
    if width is None or width.is_median:
        return _GaussianGram.apply(_ScaleFree.apply(t), None, True)
    if width.rule == "class":
        if y is None:
            raise ValueError(f"{name}: width rule 'class' needs the labels of the samples")
        _same_n(t, y, name.removeprefix("sigma_") or "x", "y")
    return _GaussianGram.apply(_ScaleFree.apply(t), lambda d2: _rule_sigma(d2, width, y), True)


class _ScaleFree(torch.autograd.Function):
    """u = c(t) v / |c(t)|, c the centring and v the value of |c(t)|: the median width with
    the gradient of a scale that follows t. u equals c(t) in value, but is unchanged when t
    is rescaled, so no gradient rewards inflating the features. One n x d tensor, shared
    with the Gram matrix's saved input."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        u = t - t.mean(0)
        ctx.save_for_backward(u)
        return u

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (u,) = ctx.saved_tensors
        sq = torch.dot(u.reshape(-1), u.reshape(-1))
        if sq > 0:
            grad = grad - u * (torch.dot(u.reshape(-1), grad.reshape(-1)) / sq)
        return grad - grad.mean(0)


def gram(x, sigma=None, width: Width | None = None, y=None) -> torch.Tensor:
    """Gaussian kernel matrix K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2)) over the flattened
    samples x (n, ...), differentiable in x.

    sigma None uses default_sigma(x), whose value is taken without gradient but which the
    gradient treats as proportional to the RMS pairwise distance: K is then exactly
    invariant to rescaling x and so is its gradient flow (training cannot gain anything
    by inflating features, which would otherwise make weights grow without bound and
    stall learning). `width` (sigma None): another rule (Width), with labels y for "class";
    its gradient is scale-free in the same way.
    """
    t = _samples(x, "x")
    yt = None if y is None else _labels(y, "y")
    return _gaussian(t, sigma, "sigma", width, yt)


def label_gram(y, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One-hot kernel of integer labels y (n,): K_ij = 1 if y_i == y_j else 0."""
    t = _labels(y, "y")
    return (t[:, None] == t[None, :]).to(dtype or torch.get_default_dtype())


def normalize(K) -> torch.Tensor:
    """A_ij = K_ij / sqrt(K_ii K_jj) / n: unit-trace, as the entropy expects."""
    t = _square(K, "K")
    d = torch.diagonal(t)
    if not bool((d > 0).all()):
        raise ValueError("K: diagonal entries must be > 0")
    s = d.rsqrt()
    return t * (s[:, None] * s[None, :]).div_(t.shape[0])


# -- entropies ----------------------------------------------------------------------------

def _check_alpha(alpha) -> float:
    return _positive(alpha, "alpha")


def _check_estimator(estimator) -> str:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    return estimator


def _renyi(p: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Renyi entropy (bits) of a probability vector p and its gradient dH/dp (0 where p=0)."""
    pos = p > 0
    safe = torch.where(pos, p, torch.ones_like(p))
    if abs(alpha - 1.0) < VN_BAND:
        logp = torch.log2(safe)
        return -(p * logp).sum(), torch.where(pos, -(logp + 1.0 / LN2), 0.0)
    pa = torch.where(pos, safe ** alpha, 0.0)
    f = pa.sum()
    h = torch.log2(f) / (1.0 - alpha)
    return h, alpha * (pa / safe) / ((1.0 - alpha) * LN2 * f)


class _SpectralEntropy(torch.autograd.Function):
    """S_alpha of the block-diagonal matrix diag(blocks) / trace, from eigenvalues computed in
    the blocks' precision (float32 stays float32: half the memory and time of float64, and
    the entropy changes by ~1e-6 relative), summed in float64.

    Backward uses d/dA sum_i g(lambda_i) = V diag(g'(lambda)) V^T, which has no
    1/(lambda_i - lambda_j) terms, so repeated or zero eigenvalues give finite gradients.
    Eigenvalues below n * eps64 * lambda_max (round-off) count as 0.
    """

    @staticmethod
    def forward(ctx, alpha: float, *blocks: torch.Tensor) -> torch.Tensor:
        want_vectors = any(ctx.needs_input_grad[1:])
        lams, vecs = [], []
        for b in blocks:
            b = b.detach()
            if b.dtype not in (torch.float32, torch.float64):
                b = b.to(torch.float64)  # LAPACK has no half precision
            # eigh reads one triangle: make the function symmetric (kernels already are exactly)
            sym = b if torch.equal(b, b.T) else torch.add(b, b.T).mul_(0.5)
            if want_vectors:
                lam, v = torch.linalg.eigh(sym)
                vecs.append(v)
            else:
                lam = torch.linalg.eigvalsh(sym)
            del sym
            lams.append(lam.to(torch.float64))
        lam = torch.cat(lams)
        tol = lam.max() * lam.numel() * torch.finfo(torch.float64).eps
        lam = torch.where(lam > tol, lam, 0.0)
        s = lam.sum()
        p = lam / s
        h, g = _renyi(p, alpha)
        if want_vectors:
            w = (g - (g * p).sum() * (p > 0)) / s  # the trace normalisation's share
            ctx.save_for_backward(w, *vecs)
            ctx.sizes = [b.shape[0] for b in blocks]
            ctx.dtypes = [b.dtype for b in blocks]
        return h.to(blocks[0].dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, *vecs = ctx.saved_tensors
        w = w * grad.to(torch.float64)
        return (None, *[_outer(v, wi.to(v.dtype)).to(dt)
                        for v, wi, dt in zip(vecs, w.split(ctx.sizes), ctx.dtypes)])


def _outer(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """V diag(w) V^T, summed over column chunks: no second n x n temporary."""
    out = torch.zeros(v.shape[0], v.shape[0], dtype=v.dtype, device=v.device)
    for c in range(0, v.shape[1], CHUNK):
        vc = v[:, c:c + CHUNK]
        out.addmm_(vc * w[c:c + CHUNK], vc.T)
    return out


def _fast_entropy(blocks: list[torch.Tensor], alpha: float, rank: int,
                  start: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list]:
    """(S_alpha of diag(blocks) / trace, the blocks' Ritz pairs (values, vectors)) by
    lowrank.spectral_sum (top `rank` pairs per block, the tail modelled from its moments)."""
    vn = abs(alpha - 1.0) < VN_BAND
    est, _, pairs = lowrank.spectral_sum(blocks, 1.0 if vn else alpha, rank, start=start)
    h = est.value if vn else torch.log2(est.value) / (1.0 - alpha)
    return h.to(blocks[0].dtype), pairs


def _entropy(A: torch.Tensor, alpha: float, estimator: str = "exact") -> torch.Tensor:
    if alpha == 2.0:  # tr(A^2) = sum_ij A_ij^2 for symmetric A: no eigendecomposition
        a = A.reshape(-1)
        return -torch.log2(torch.dot(a, a) / torch.trace(A) ** 2)
    if estimator == "fast":
        return _fast_entropy([A], alpha, FAST_RANK)[0]
    return _SpectralEntropy.apply(alpha, A)


def _mi_entropies(A: torch.Tensor, B: torch.Tensor, alpha: float,
                  estimator: str = "exact") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S(A), S(B), S(A o B)) of two kernels. The fast path computes the joint's 2 FAST_RANK
    top pairs by a Nystrom step on products of the factors' Ritz vectors
    (lowrank.product_start): the joint's top spectrum holds both factors' top spectra."""
    if alpha == 2.0 or estimator != "fast":
        return _entropy(A, alpha, estimator), _entropy(B, alpha, estimator), \
            _entropy(A * B, alpha, estimator)
    s_a, pa = _fast_entropy([A], alpha, FAST_RANK)
    s_b, pb = _fast_entropy([B], alpha, FAST_RANK)
    start = lowrank.product_start(pa[0], pb[0], 2 * (FAST_RANK + lowrank.OVERSAMPLE))
    s_ab = _fast_entropy([A * B], alpha, 2 * FAST_RANK, [start])[0]
    return s_a, s_b, s_ab


def entropy(A, alpha: float = 1.01, estimator: str = "exact") -> torch.Tensor:
    """S_alpha(A) = log2(sum_i lambda_i^alpha) / (1 - alpha), in bits, of a symmetric
    positive semi-definite A taken as A / tr(A) (normalize() gives tr 1).

    alpha = 1 (within 1e-6) is the von Neumann limit -sum lambda log2 lambda; alpha = 2
    uses -log2(sum_ij A_ij^2) without eigendecomposition. Negative round-off eigenvalues
    count as 0. Differentiable, with finite gradients on degenerate spectra.
    estimator "fast" computes only the top FAST_RANK eigenpairs and brackets the rest
    (labpnn.lowrank, error bound in docs/information.md); it is exact up to FAST_RANK + 8 samples.
    """
    t = _square(A, "A")
    a = _check_alpha(alpha)
    est = _check_estimator(estimator)
    if not float(torch.trace(t.detach())) > 0:
        raise ValueError("A: trace must be > 0 (pass a kernel matrix from normalize())")
    return _entropy(t, a, est)


def joint_entropy(A, B, alpha: float = 1.01, estimator: str = "exact") -> torch.Tensor:
    """Joint entropy S_alpha(A, B) = S_alpha((A o B) / tr(A o B)), o the Hadamard product;
    the fast estimator as in mutual_information."""
    a, b = _square(A, "A"), _square(B, "B")
    _same_n(a, b, "A", "B")
    al, e = _check_alpha(alpha), _check_estimator(estimator)
    if not float(torch.trace((a * b).detach())) > 0:
        raise ValueError("A o B: trace must be > 0 (pass kernel matrices from normalize())")
    return _mi_entropies(a, b, al, e)[2]


def _class_groups(y: torch.Tensor) -> list[torch.Tensor]:
    order = torch.argsort(y, stable=True)
    counts = torch.unique_consecutive(y[order], return_counts=True)[1]
    return list(order.split(counts.tolist()))


def label_entropy(y, alpha: float = 1.01) -> torch.Tensor:
    """S_alpha of the normalised one-hot label kernel: exactly the Renyi entropy (bits) of
    the class frequencies (its eigenvalues are n_c / n)."""
    t = _labels(y, "y")
    counts = torch.unique(t, return_counts=True)[1].to(torch.float64)
    return _renyi(counts / t.shape[0], _check_alpha(alpha))[0]


def label_joint_entropy(A, y, alpha: float = 1.01, estimator: str = "exact") -> torch.Tensor:
    """S_alpha(A, label kernel of y), exploiting that A o K_y is block-diagonal by class:
    one small eigendecomposition per class instead of one n x n."""
    a, t = _square(A, "A"), _labels(y, "y")
    _same_n(a, t, "A", "y")
    return _label_joint(a, t, _check_alpha(alpha), _check_estimator(estimator))


def _label_joint(a: torch.Tensor, y: torch.Tensor, alpha: float,
                 estimator: str = "exact") -> torch.Tensor:
    if alpha == 2.0:
        return _entropy(a * (y[:, None] == y[None, :]), alpha)
    blocks = [a[g][:, g] for g in _class_groups(y)]
    if estimator == "fast":
        return _fast_entropy(blocks, alpha, FAST_RANK)[0]
    return _SpectralEntropy.apply(alpha, *blocks)


def _kernel(x, sigma, name: str, width: Width | None = None,
            y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(kernel matrix, labels or None) of x. Unnormalised: the entropies are invariant
    to the scale of the matrix, and both kernels have a unit diagonal."""
    t = _tensor(x, name)
    if _is_labels(t):
        return label_gram(t), t
    t = _samples(t, name)
    return _gaussian(t, sigma, f"sigma_{name}", width, y), None


def mutual_information(x, z, alpha: float = 1.01, sigma_x=None, sigma_z=None,
                       estimator: str = "exact", width_x: Width | None = None,
                       width_z: Width | None = None, y=None) -> torch.Tensor:
    """I_alpha(X; Z) = S(A) + S(B) - S(A, B) in bits, A and B the normalised kernels of x
    and z (Gaussian with widths sigma_x, sigma_z, else by the rules width_x, width_z, else
    default_sigma; one-hot for labels); estimator as in entropy(). y: the labels the rule
    "class" reads (default: x or z when it is a label vector)."""
    a = _check_alpha(alpha)
    e = _check_estimator(estimator)
    labels = None if y is None else _labels(y, "y")
    for v in (x, z):
        if labels is None and _is_labels(_tensor(v, "x")):
            labels = _tensor(v, "x")
    A, ya = _kernel(x, sigma_x, "x", width_x, labels)
    B, yb = _kernel(z, sigma_z, "z", width_z, labels)
    _same_n(A, B, "x", "z")
    if ya is None and yb is None:
        s_a, s_b, s_ab = _mi_entropies(A, B, a, e)
        return s_a + s_b - s_ab
    s_a = label_entropy(ya, a).to(A.dtype) if ya is not None else _entropy(A, a, e)
    s_b = label_entropy(yb, a).to(B.dtype) if yb is not None else _entropy(B, a, e)
    s_ab = _label_joint(B, ya, a, e) if yb is None else _label_joint(A, yb, a, e)
    return s_a + s_b - s_ab
