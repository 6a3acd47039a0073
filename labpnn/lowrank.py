"""Spectral sums sum_i g(lambda_i / s) of symmetric positive semi-definite matrices without a
full eigendecomposition: the top `rank` eigenpairs by randomized subspace iteration, the rest
of the spectrum (the tail) from its exact count, sum and sum of squares.

The tail's m eigenvalues lie in [0, b] (b the smallest kept Ritz value) and their sum tau and
sum of squares tau2 are exact (tr A and sum_ij A_ij^2 minus the kept part). For g(x) = x^alpha
(and the von Neumann g(x) = -x log2 x) the sum over the tail is bracketed by the two
two-point spectra with those moments, one with an atom at 0 and one with an atom at b (the
Chebyshev-Markov extremes for a g whose third derivative keeps its sign); the estimate is the
bracket's midpoint and its error bound half its width. docs/information.md has the details.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["SpectralSum", "power", "spectral_sum"]

LN2 = 0.6931471805599453

OVERSAMPLE = 8      # extra columns of the random start block
POWER_STEPS = 2     # subspace iterations after the first product


class SpectralSum(tuple):
    """(value, half_width): the estimated sum (a differentiable scalar tensor) and a bound on
    its error from the tail (a float); half_width is 0 when every eigenvalue was computed."""

    __slots__ = ()

    def __new__(cls, value: torch.Tensor, half_width: float):
        return super().__new__(cls, (value, half_width))

    value = property(lambda self: self[0])
    half_width = property(lambda self: self[1])


class _RitzValues(torch.autograd.Function):
    """lambda_i = v_i^T A v_i for fixed orthonormal columns v_i: the values come precomputed,
    the gradient is V diag(g) V^T (the first-order change of each eigenvalue)."""

    @staticmethod
    def forward(ctx, A: torch.Tensor, V: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(V)
        return lam.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (V,) = ctx.saved_tensors
        return (V * grad.to(V.dtype)) @ V.T, None, None


@torch.no_grad()
def _top_pairs(A: torch.Tensor, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, vectors) of the top `rank` Ritz pairs of symmetric A; all pairs when small."""
    n = A.shape[0]
    if n <= rank + OVERSAMPLE:
        return torch.linalg.eigh((A + A.T) * 0.5)
    g = torch.Generator(device=A.device).manual_seed(seed)
    Q = torch.linalg.qr(A @ torch.randn(n, rank + OVERSAMPLE, generator=g, device=A.device,
                                        dtype=A.dtype))[0]
    for _ in range(POWER_STEPS):
        Q = torch.linalg.qr(A @ Q)[0]
    T = (Q.T @ (A @ Q)).to(torch.float64)
    lam, W = torch.linalg.eigh((T + T.T) * 0.5)
    return lam[-rank:], Q @ W[:, -rank:].to(A.dtype)


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


def spectral_sum(blocks: list[torch.Tensor], g: Callable[[torch.Tensor], torch.Tensor],
                 rank: int, seed: int = 0) -> tuple[SpectralSum, torch.Tensor]:
    """(sum_i g(p_i), s): p the eigenvalues of the block-diagonal matrix diag(blocks) divided
    by s = its trace, each block's top `rank` pairs exact and its tail bracketed (module
    docstring). g must map 0 to 0; differentiable in the blocks."""
    s = sum(torch.trace(b) for b in blocks).to(torch.float64)
    total = torch.zeros((), dtype=torch.float64, device=s.device)
    half = 0.0
    for blk in blocks:
        lam, V = _top_pairs(blk.detach(), rank, seed)
        lam = _RitzValues.apply(blk, V, lam.to(blk.dtype)).to(torch.float64) / s
        tol = lam.detach().max() * blk.shape[0] * torch.finfo(blk.dtype).eps
        keep = lam > tol
        total = total + g(torch.where(keep, lam, 1.0)).where(keep, 0.0).sum()
        m = blk.shape[0] - lam.shape[0]
        if m == 0:
            continue
        tau = (torch.trace(blk).to(torch.float64) / s - lam.sum()).clamp_min(0.0)
        tau2 = (torch.linalg.vector_norm(blk).to(torch.float64) ** 2 / s ** 2
                - (lam * lam).sum()).clamp_min(0.0)
        if float(tau.detach()) <= 0.0 or float(tau2.detach()) <= 0.0:
            continue
        lo, hi = _tail_bracket(g, m, tau, tau2, lam.min())
        total = total + (lo + hi) * 0.5
        half += abs(float((hi - lo).detach())) * 0.5
    return SpectralSum(total, half), s


def power(alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """g(x) = x^alpha, or -x log2 x for the von Neumann limit alpha = 1."""
    if alpha == 1.0:
        return lambda x: -torch.xlogy(x, x) / LN2
    return lambda x: x ** alpha

