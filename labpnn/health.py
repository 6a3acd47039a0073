"""Statistical health of a unit's output channels, independent of what the instrument claims.

Checked on every measured batch: non-finite values; a channel stuck at a constant; a channel
clipped at one value; a channel uncorrelated with what the unit's model predicts for the same
inputs; and a noise scale that changes against the channel's own history.
"""

from __future__ import annotations

import numpy as np

MIN_SPREAD = 1e-6          # a reference channel spreading less than this carries no signal
MIN_CORRELATION = 0.5      # measured vs predicted, per channel
MAX_CLIPPED = 0.5          # fraction of a batch at a channel's extreme value
NOISE_GROWTH = 4.0         # residual spread against the channel's own history


class ChannelMonitor:
    """Per-channel checks on the batches of one unit's measurements, with a memory of how
    each channel behaved while healthy. `faulty` accumulates the channels found broken."""

    def __init__(self, n_channels: int, known: dict[int, str] | None = None):
        self.faulty: dict[int, str] = dict(known or {})
        self._noise = np.full(n_channels, np.nan)  # healthy residual spread / signal spread
        self._spread = np.full(n_channels, np.nan)  # healthy output spread

    def check(self, measured: np.ndarray, predicted: np.ndarray | None = None) -> dict[int, str]:
        """The channels newly found broken in this batch, with the reason for each."""
        measured = np.asarray(measured, np.float64)
        found: dict[int, str] = {}
        bad = ~np.isfinite(measured).all(0)
        for c in np.flatnonzero(bad):
            found[int(c)] = "non-finite: NaN or infinite values"
        finite = np.where(np.isfinite(measured), measured, 0.0)
        spread = finite.std(0)
        if len(measured) >= 8:
            top = (finite >= finite.max(0) - 1e-12).mean(0)
            for c in np.flatnonzero((top > MAX_CLIPPED) & (spread > MIN_SPREAD)):
                found.setdefault(int(c), f"clipped: {100 * top[c]:.0f} % of values at {finite[:, c].max():.3g}")
        if predicted is not None and len(measured) >= 8:
            self._against_model(finite, np.asarray(predicted, np.float64), spread, found)
        else:
            stuck = (spread < 0.05 * self._spread) & np.isfinite(self._spread)
            for c in np.flatnonzero(stuck):
                found.setdefault(int(c), f"stuck: spread fell to {spread[c]:.3g} from {self._spread[c]:.3g}")
        healthy = np.ones(measured.shape[1], bool)
        healthy[list(found)] = False
        healthy[list(self.faulty)] = False
        self._spread = np.where(healthy & np.isnan(self._spread), spread, self._spread)
        new = {c: r for c, r in found.items() if c not in self.faulty}
        self.faulty.update(new)
        return new

    def _against_model(self, measured, predicted, spread, found) -> None:
        ref_spread = predicted.std(0)
        live = ref_spread > MIN_SPREAD
        for c in np.flatnonzero(live & (spread <= MIN_SPREAD)):
            found.setdefault(int(c), f"stuck: at {measured[0, c]:.3g} while the model predicts a spread of "
                                     f"{ref_spread[c]:.3g}")
        m = measured - measured.mean(0)
        p = predicted - predicted.mean(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = (m * p).sum(0) / np.sqrt((m**2).sum(0) * (p**2).sum(0))
            noise = (measured - predicted).std(0) / ref_spread
        for c in np.flatnonzero(live & (spread > MIN_SPREAD) & (corr < MIN_CORRELATION)):
            found.setdefault(int(c), f"uncorrelated with its inputs: r = {corr[c]:.2f} against the model")
        grown = live & np.isfinite(self._noise) & (noise > NOISE_GROWTH * self._noise) & (noise > 0.2)
        for c in np.flatnonzero(grown):
            found.setdefault(int(c), f"noisier: noise grew {noise[c] / self._noise[c]:.1f}x against its history")
        fresh = live & np.isnan(self._noise) & np.isfinite(noise)
        self._noise = np.where(fresh, noise, self._noise)


def describe_channels(reasons: dict[int, str]) -> str:
    """Broken channels grouped by what is wrong with them, in one line."""
    groups: dict[str, list[int]] = {}
    for channel, reason in sorted(reasons.items()):
        groups.setdefault(reason.split(":")[0], []).append(channel)
    return "; ".join(f"{what}: channel{'s' if len(c) > 1 else ''} {', '.join(map(str, c))}"
                     for what, c in groups.items())
