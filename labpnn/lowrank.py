"""Spectral sums sum_i g(lambda_i / s) of symmetric positive semi-definite matrices without a
full eigendecomposition: the top `rank` eigenpairs by randomized subspace iteration, the rest
of the spectrum (the tail) from its exact count, sum and sum of squares.

The tail's m eigenvalues lie in [0, b] (b the smallest kept Ritz value) and their sum tau and
sum of squares tau2 are exact (tr A and sum_ij A_ij^2 minus the kept part). The estimate
models them as a gamma distribution with that mean and variance (closed form for
g(x) = x^alpha and the von Neumann g(x) = -x log2 x); the bound brackets the sum over the
tail by the two two-point spectra with those moments, one with an atom at 0 and one with an
atom at b (the Chebyshev-Markov extremes for a g whose third derivative keeps its sign); the
true tail sum lies in that bracket, so the estimate's error bound is its distance to the
bracket's farther end.
docs/information.md has the details and the measured errors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

__all__ = ["SpectralSum", "power", "spectral_sum", "tail_model"]

LN2 = 0.6931471805599453

OVERSAMPLE = 8      # extra columns of the random start block
MAX_SHAPE = 1e6     # the gamma model's shape mu^2 / var is capped here (var -> 0: all equal)
POWER_STEPS = 2     # subspace iterations (products with A) before the Nystrom step
SKETCH_NONZEROS = 8  # nonzeros per column of the sparse random start (at least)
START_STEPS = 0     # the same from a near-invariant start (0: Nystrom on it directly)


class SpectralSum(tuple):
    """(value, half_width): the estimated sum (a differentiable scalar tensor) and a bound on
    its error from the tail (a float); half_width is 0 when every eigenvalue was computed."""

    __slots__ = ()

    def __new__(cls, value: torch.Tensor, half_width: float):
        return super().__new__(cls, (value, half_width))

    value = property(lambda self: self[0])
    half_width = property(lambda self: self[1])


class _Statistics(torch.autograd.Function):
    """(lambda, tr A, sum_ij A_ij^2) of a block A: lambda_i = v_i^T A v_i for fixed orthonormal
    columns v_i (the values come precomputed), the moments summed in float64. Backward is one
    n x n product, V diag(g_lambda) V^T + 2 g_s A + g_t I (the first-order change of each
    eigenvalue and the moments' exact gradients), into one new matrix."""

    @staticmethod
    def forward(ctx, A: torch.Tensor, V: torch.Tensor, lam: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(A, V)
        # each row's norm in A's precision (~1e-8 relative in all), summed in float64: the
        # tail's sum of squares is a small difference of this one
        rows = torch.linalg.vector_norm(A, dim=1).to(torch.float64)
        return lam.clone(), torch.diagonal(A).sum(dtype=torch.float64), torch.dot(rows, rows)

    @staticmethod
    def backward(ctx, g_lam: torch.Tensor | None, g_t: torch.Tensor | None,
                 g_s: torch.Tensor | None):
        A, V = ctx.saved_tensors
        Vg = V * (torch.zeros(V.shape[1], dtype=V.dtype, device=V.device) if g_lam is None
                  else g_lam.to(V.dtype))
        out = torch.addmm(A, Vg, V.T, beta=0.0 if g_s is None else 2.0 * float(g_s))
        if g_t is not None:
            out.diagonal().add_(g_t.to(A.dtype))
        return out, None, None


@torch.no_grad()
def _ritz_pairs(A: torch.Tensor, columns: int, seed: int,
                start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values ascending, vectors) of approximate top eigenpairs of symmetric positive
    semi-definite A on a subspace of `columns` dimensions: POWER_STEPS subspace iterations
    from a sparse random sketch (the first, A Omega, one sparse pass over A) and a Nystrom
    approximation; or START_STEPS from A start (start a near-invariant subspace, see
    spectral_sum); all pairs when A is small."""
    n = A.shape[0]
    if n <= columns:
        return torch.linalg.eigh((A + A.T) * 0.5)
    if start is None:
        Y, steps = _sketch(A, columns, seed), POWER_STEPS - 1
    else:
        Y, steps = start.to(A.dtype), START_STEPS
    if steps:  # the range finder's products only steer the subspace: bfloat16 where it is fast
        P = A.to(torch.bfloat16) if A.device.type == "cpu" and _fast_bfloat16() else A
        for _ in range(steps):
            Y = (P @ _orthonormal(Y).to(P.dtype)).to(A.dtype)
    return _nystrom(A, _orthonormal(Y))


def _sketch(A: torch.Tensor, columns: int, seed: int) -> torch.Tensor:
    """A Omega for a seeded sparse sign matrix Omega (n, columns): each row of Omega holds
    one +-1 (more when n < SKETCH_NONZEROS * columns, so every column holds about that many),
    in a random column; a sum of signed rows of symmetric A, one pass over A and no n x n
    product. Every sample enters the sketch (an isolated one is an eigenvector by itself), and
    for kernels, whose other eigenvectors are spread over the samples, it starts the subspace
    iteration as well as a Gaussian Omega."""
    cols, rows, signs = _sketch_pattern(A.shape[0], columns, seed)
    omega_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), signs.to(A.dtype),
                                      (columns, A.shape[0]), check_invariants=False)
    return torch.sparse.mm(omega_t.to(A.device), A).T


@functools.lru_cache(maxsize=32)
def _sketch_pattern(n: int, columns: int, seed: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(columns, rows, signs) of the nonzeros of _sketch's Omega."""
    g = torch.Generator().manual_seed(seed)
    hits = -(-SKETCH_NONZEROS * columns // n)      # entries per row
    rows = torch.arange(n).repeat(hits)
    # hit t of row r in column (c_r + t) mod columns: a row's hits in distinct columns, and
    # every column with n * hits / columns of them (+-1)
    first = torch.randperm(n, generator=g) % columns
    cols = (first + torch.arange(hits)[:, None]).reshape(-1) % columns
    signs = torch.randint(0, 2, (hits * n,), generator=g) * 2 - 1
    return cols, rows, signs


def _orthonormal(Y: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning Y's: Cholesky QR (the Gram matrix in Y's precision, its
    factor in float64), about twice as fast as Householder QR; Householder QR when the Gram
    matrix is numerically singular. Orthogonality is lost as eps cond(Y)^2, harmless here:
    the subspace iteration and the Nystrom step depend on the span only."""
    L, failed = torch.linalg.cholesky_ex((Y.T @ Y).to(torch.float64))
    if failed:
        return torch.linalg.qr(Y)[0]
    return torch.linalg.solve_triangular(L.T.to(Y.dtype), Y, upper=True, left=False)


@functools.cache
def _fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX512-BF16, several
    times faster than float32); elsewhere torch emulates them, slower."""
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def _sym(m: torch.Tensor) -> torch.Tensor:
    return (m + m.T) * 0.5


def _nystrom(A: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of the Nystrom approximation Y (Q^T Y)^-1 Y^T, Y = A Q, for orthonormal Q:
    below A in the PSD order, more accurate than Rayleigh-Ritz on Q and (measured) about as
    accurate as on A Q, for one product fewer (shifted by nu for a stable Cholesky factor;
    Tropp et al. 2017)."""
    Y = A @ Q
    nu = torch.finfo(A.dtype).eps * float(torch.linalg.vector_norm(Y))
    Y.add_(Q, alpha=nu)
    L = torch.linalg.cholesky(_sym((Q.T @ Y).to(torch.float64)))
    F = torch.linalg.solve_triangular(L.T.to(A.dtype), Y, upper=True, left=False)  # Y L^-T
    s2, W = torch.linalg.eigh(_sym(F.T @ F))  # in A's precision: errors ~ eps * lambda_max
    s2 = s2.to(torch.float64).clamp_min(0.0)
    U = F @ (W / s2.sqrt().clamp_min(1e-30).to(A.dtype))
    return (s2 - nu).clamp_min(0.0), U


def _tail_bracket(g: Callable[[torch.Tensor], torch.Tensor], m: int, tau: torch.Tensor,
                  tau2: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum g over m values in [0, b] with sum tau and sum of squares tau2, for the two extreme
    two-point spectra: atoms {0, c0} and {c1, b}."""
    mu, s = tau / m, tau2 / m
    s = torch.maximum(s, mu * mu)       # round-off: variance >= 0
    c0 = s / mu                          # atoms at 0 (weight 1 - w0) and c0 (weight w0)
    w0 = mu / c0
    at_zero = m * w0 * g(c0)
    # atoms at b (weight w1) and c1 (weight 1 - w1); b >= mu as b is the largest tail value
    b = torch.maximum(b, c0)
    c1 = (mu - (s - mu * mu) / (b - mu).clamp_min(1e-300)).clamp_min(0.0)
    w1 = ((mu - c1) / (b - c1).clamp_min(1e-300)).clamp(0.0, 1.0)
    at_b = m * (w1 * g(b) + (1 - w1) * g(c1))
    return at_zero, at_b


def tail_model(alpha: float, m: int, tau: torch.Tensor, tau2: torch.Tensor) -> torch.Tensor:
    """sum g over m values drawn from the gamma distribution with mean tau / m and mean square
    tau2 / m: m theta^alpha Gamma(k + alpha) / Gamma(k) for g = x^alpha, and
    -m mu (digamma(k + 1) + ln theta) / ln 2 for the von Neumann g (alpha = 1); k the shape,
    theta the scale."""
    mu = tau / m
    var = torch.maximum(tau2 / m - mu * mu, mu * mu / MAX_SHAPE)
    k, theta = mu * mu / var, var / mu
    if alpha == 1.0:
        return -m * mu * (torch.digamma(k + 1) + torch.log(theta)) / LN2
    return m * torch.exp(alpha * torch.log(theta) + torch.lgamma(k + alpha) - torch.lgamma(k))


def spectral_sum(blocks: list[torch.Tensor], alpha: float, rank: int, seed: int = 0,
                 start: list[torch.Tensor] | None = None
                 ) -> tuple[SpectralSum, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(sum_i g(p_i), s, pairs), g = power(alpha): p the eigenvalues of the block-diagonal
    matrix diag(blocks) divided by s = its trace, each block's top `rank` pairs exact and its
    tail modelled and bracketed (module docstring); differentiable in the blocks. pairs: each
    block's rank + OVERSAMPLE Ritz values (ascending) and vectors (no gradient). start: per
    block, columns spanning nearly its top eigenspace (for a Hadamard product A o B,
    product_start), used with START_STEPS power steps in place of a random sketch with
    POWER_STEPS."""
    g = power(alpha)
    stats, pairs = [], []
    for i, blk in enumerate(blocks):
        cols = rank + OVERSAMPLE if start is None else max(rank + OVERSAMPLE, start[i].shape[1])
        lam_all, V_all = _ritz_pairs(blk.detach(), cols, seed, None if start is None else start[i])
        pairs.append((lam_all, V_all))
        k = lam_all.shape[0] if lam_all.shape[0] == blk.shape[0] else rank  # all: keep all
        stats.append(_Statistics.apply(blk, V_all[:, -k:], lam_all[-k:].to(blk.dtype)))
    s = sum(t for _, t, _ in stats)
    total = torch.zeros((), dtype=torch.float64, device=s.device)
    half = 0.0
    for i, blk in enumerate(blocks):
        lam = stats[i][0].to(torch.float64) / s
        tol = lam.detach().max() * blk.shape[0] * torch.finfo(torch.float64).eps  # as info's
        keep = lam > tol
        total = total + g(torch.where(keep, lam, 1.0)).where(keep, 0.0).sum()
        m = blk.shape[0] - lam.shape[0]
        if m == 0:
            continue
        tau = (stats[i][1] / s - lam.sum()).clamp_min(0.0)
        if float(tau.detach()) <= 0.0:
            continue
        # tau2 is a small difference, at most round-off when the tail is nearly flat (it can
        # come out negative): at least tau^2 / m, its value for a flat tail
        tau2 = torch.maximum(stats[i][2] / s ** 2 - (lam * lam).sum(), tau * tau / m)
        lo, hi = _tail_bracket(g, m, tau, tau2, lam.min())
        est = tail_model(alpha, m, tau, tau2)
        total = total + est
        half += float(torch.maximum((est - lo).abs(), (hi - est).abs()).detach())
    return SpectralSum(total, half), s, pairs


def product_start(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor],
                  columns: int) -> torch.Tensor:
    """Columns spanning nearly the top eigenspace of A o B, from Ritz pairs a of A and b of B
    (values, vectors): v_i o w_j for the `columns` largest lambda_i mu_j. A o B is the sum
    over all i, j of lambda_i mu_j (v_i o w_j)(v_i o w_j)^T, so these products carry its top
    spectrum: for Gaussian kernels (a nearly constant top vector) mu_1 lambda_i with v_i,
    lambda_1 mu_j with w_j, then products of lower modes where they are large (low-dimensional
    features)."""
    (la, va), (lb, vb) = a, b
    prod = la.clamp_min(0.0)[:, None] * lb.clamp_min(0.0)[None, :]
    top = torch.topk(prod.reshape(-1), min(columns, prod.numel())).indices
    return va.index_select(1, top // lb.shape[0]) * vb.index_select(1, top % lb.shape[0])


def power(alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """g(x) = x^alpha, or -x log2 x for the von Neumann limit alpha = 1."""
    if alpha == 1.0:
        return lambda x: -torch.xlogy(x, x) / LN2
    return lambda x: x ** alpha

