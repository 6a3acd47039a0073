"""SLM code the driver and the twin share: the phase LUT, frame checks and geometry."""

from __future__ import annotations

import numpy as np

TWO_PI = 2 * np.pi


class PhaseLUT:
    """Grey level -> phase (rad) of a phase SLM: linear 0..2pi by default, or a calibration
    table (a list, or a text file with one phase per grey level)."""

    def __init__(self, bit_depth: int, table: str | list[float] | None = None):
        n = 2**bit_depth
        if table is None:
            phases = TWO_PI * np.arange(n) / n
        else:
            try:
                phases = np.loadtxt(table, dtype=float).ravel() if isinstance(table, str) else np.asarray(table, float)
            except (OSError, ValueError) as exc:
                raise ValueError(f"SLM lut file {table!r} cannot be read: {exc}") from None
        if phases.shape != (n,) or not np.isfinite(phases).all() or (np.diff(phases) < 0).any():
            raise ValueError(f"SLM lut must list {n} finite, non-decreasing phases (one per grey "
                             f"level of a {bit_depth}-bit SLM), got {phases.size} values")
        self.phases = phases
        self.dtype = np.uint8 if bit_depth <= 8 else np.uint16

    def phase_to_grey(self, phase) -> np.ndarray:
        """The grey level whose phase is nearest to `phase` (modulo 2 pi), elementwise."""
        p = self.phases
        t = p[0] + np.mod(np.asarray(phase, dtype=float) - p[0], TWO_PI)
        hi = np.clip(np.searchsorted(p, t), 0, p.size - 1)
        lo = np.clip(hi - 1, 0, p.size - 1)
        best = np.where(np.abs(t - p[lo]) <= np.abs(p[hi] - t), lo, hi)
        wraps = np.abs(p[0] + TWO_PI - t) < np.abs(t - p[best])  # level 0 seen one turn later
        return np.where(wraps, 0, best).astype(self.dtype)


def validate_frames(frames, shape: tuple[int, int], bit_depth: int, where: str) -> np.ndarray:
    """Check SLM frames (h, w) or (n, h, w): size and integer grey levels within the bit depth.
    Returns them as C-contiguous uint8 (8 bit) or uint16; ValueError naming `where` otherwise."""
    frames = np.asarray(frames)
    if frames.shape[-2:] != tuple(shape) or frames.ndim not in (2, 3):
        raise ValueError(f"{where}: frame shape {frames.shape}, expected {tuple(shape)} "
                         "(height, width) or a stack (n, height, width)")
    if not np.issubdtype(frames.dtype, np.integer):
        raise ValueError(f"{where}: frames must hold integer grey levels, got dtype {frames.dtype}")
    if frames.size and (frames.min() < 0 or frames.max() >= 2**bit_depth):
        raise ValueError(f"{where}: grey levels {frames.min()}..{frames.max()} exceed the "
                         f"{bit_depth}-bit range 0..{2**bit_depth - 1}")
    return np.ascontiguousarray(frames, dtype=np.uint8 if bit_depth == 8 else np.uint16)


class SLMGeometry:
    """shape, bit_depth and settle_s of an SLM, from its options (drivers and twins alike)."""

    @property
    def shape(self) -> tuple[int, int]:
        return (self.options.height, self.options.width)

    @property
    def bit_depth(self) -> int:
        return self.options.bit_depth

    @property
    def settle_s(self) -> float:
        return self.options.settle_ms / 1000
