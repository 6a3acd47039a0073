"""Statistical health of a unit's output channels, independent of what the instrument claims.

Checked on every measured batch: non-finite values; a channel stuck at a constant; a channel
clipped at one value; against the unit's model (when it has one), a channel uncorrelated with
its inputs, moving where the model predicts a constant, or noisier than its own history, each
judged by its residual against the other channels' (healthy hardware departs from its model
about equally everywhere, so a channel with little signal may correlate poorly yet be
healthy); and a unit whose outputs carry no signal at all. Without a model, a channel is
judged against its own history: its first batch, or a `reference` (an earlier, healthy
measurement of the unit, e.g. the one recorded while training) so that a fault present from
the first batch of a re-measurement (a saturated camera, an OPU whose exposure collapsed) is
still found. A sparse channel (a ReLU that fires on a few inputs in a hundred) that sits at
its floor for a whole batch is stuck only if its history makes that improbable.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binom

MIN_SPREAD = 1e-6          # a reference channel spreading less than this carries no signal
LIVE_FRACTION = 0.05       # ... as does one spreading less than this times the median channel
MIN_CORRELATION = 0.5      # measured vs predicted, per channel
MAX_CLIPPED = 0.5          # fraction of a batch at a channel's extreme value
NOISE_GROWTH = 4.0         # residual spread against the channel's own history
INSTRUMENT = 0.75          # fraction of live channels broken at once: the instrument is at fault
OUTLIER = 10.0             # residual against the model, x the channels' lower-quartile residual
NOISY = 5.0                # ... for a residual that grew against its history to count
ACCURACY_DROP = 0.10       # verification: test accuracy lost (absolute) with no channel flagged
QUIET_P = 1e-9             # a batch at a channel's floor this improbable, given its history, is stuck


class Diagnosis(enum.StrEnum):
    """What is wrong with a channel."""
    NON_FINITE = "non-finite"
    CLIPPED = "clipped"
    STUCK = "stuck"
    UNCORRELATED = "uncorrelated with its inputs"   # moves, but not as the model predicts
    SPURIOUS = "spurious signal"                    # moves where the model predicts a constant
    NOISIER = "noisier"


@dataclass(frozen=True)
class ChannelFault:
    """One broken channel: its diagnosis, and the numbers behind it."""
    diagnosis: Diagnosis
    detail: str

    def __str__(self) -> str:
        return f"{self.diagnosis.value}: {self.detail}"


class ChannelMonitor:
    """Per-channel checks on the batches of one unit's measurements, with a memory of how
    each channel behaved while healthy. `faulty` accumulates the channels found broken."""

    def __init__(self, n_channels: int, known: dict[int, ChannelFault] | None = None,
                 reference: np.ndarray | None = None):
        self._start = (n_channels, dict(known or {}), reference)
        self.faulty: dict[int, ChannelFault] = dict(known or {})
        self._noise = np.full(n_channels, np.nan)  # healthy residual (measured - predicted) spread
        self._spread = np.full(n_channels, np.nan)  # healthy output spread
        self._floor = np.full(n_channels, np.nan)  # healthy minimum (a ReLU's 0)
        self._seen = np.zeros(n_channels)  # healthy values seen since the floor was set ...
        self._off = np.zeros(n_channels)  # ... and how many of them were off the floor
        self.live = np.zeros(n_channels, bool)  # channels seen carrying signal
        if reference is not None:
            ref = np.asarray(reference, np.float64)
            ref = ref[np.isfinite(ref).all(1)] if ref.ndim == 2 else ref[:0]
            if len(ref) >= 8 and ref.shape[1] == n_channels:
                self._remember(ref, np.ones(n_channels, bool))
                self.live |= _live(self._spread)

    def restart(self) -> None:
        """Forget every batch seen: back to the channels known broken and the reference given
        (to measure again after the instrument was fixed)."""
        self.__init__(*self._start)

    def broken_live(self) -> tuple[int, int]:
        """(broken, live): how many of the channels seen carrying signal are broken."""
        live = np.flatnonzero(self.live)
        return sum(int(c) in self.faulty for c in live), int(live.size)

    def instrument_broken(self) -> bool:
        """(Nearly) every channel that carried signal is broken: the instrument, not a few
        channels, is at fault (a saturated or dark detector, a dead board)."""
        broken, live = self.broken_live()
        return live > 0 and broken >= INSTRUMENT * live

    def check(self, measured: np.ndarray, predicted: np.ndarray | None = None) -> dict[int, ChannelFault]:
        """The channels newly found broken in this batch, with the reason for each."""
        measured = np.asarray(measured, np.float64)
        found: dict[int, ChannelFault] = {}
        bad = ~np.isfinite(measured).all(0)
        for c in np.flatnonzero(bad):
            found[int(c)] = ChannelFault(Diagnosis.NON_FINITE, "NaN or infinite values")
        finite = np.where(np.isfinite(measured), measured, 0.0)
        spread = finite.std(0)
        if len(measured) >= 8:
            top = (finite >= finite.max(0) - 1e-12).mean(0)
            for c in np.flatnonzero((top > MAX_CLIPPED) & (spread > MIN_SPREAD)):
                found.setdefault(int(c), ChannelFault(Diagnosis.CLIPPED, f"{100 * top[c]:.0f} % of values at "
                                                                      f"{finite[:, c].max():.3g}"))
        if predicted is not None and len(measured) >= 8:
            predicted = np.asarray(predicted, np.float64)
            live = _live(predicted.std(0))
            self.live |= live
            self._against_model(finite, predicted, spread, live, found)
        elif len(measured) >= 8:  # a batch of a few rows (a split's remainder) shows no spread to judge
            stuck = (spread < 0.05 * self._spread) & np.isfinite(self._spread)
            for c in np.flatnonzero(stuck):
                if not self._quiet_by_chance(finite[:, c], c):
                    found.setdefault(int(c), ChannelFault(Diagnosis.STUCK, f"spread fell to {spread[c]:.3g} from "
                                                                          f"{self._spread[c]:.3g}"))
        healthy = np.ones(measured.shape[1], bool)
        healthy[list(found)] = False
        healthy[list(self.faulty)] = False
        fresh = healthy & np.isnan(self._spread)
        self._remember(finite, fresh)  # counts this batch for the fresh channels ...
        self._count(finite, healthy & ~fresh)  # ... and here for the others
        if len(measured) >= 8:
            self.live |= healthy & _live(spread)
        new = {c: r for c, r in found.items() if c not in self.faulty}
        self.faulty.update(new)
        return new

    def _remember(self, healthy: np.ndarray, channels: np.ndarray) -> None:
        """Take `healthy` (a batch, or an earlier measurement) as the history of `channels`."""
        self._spread[channels] = healthy.std(0)[channels]
        self._floor[channels] = healthy.min(0)[channels]
        self._seen[channels] = 0
        self._off[channels] = 0
        self._count(healthy, channels)

    def _count(self, healthy: np.ndarray, channels: np.ndarray) -> None:
        """Add a healthy batch to the channels' tally of values off their floor."""
        ok = channels & np.isfinite(self._floor)
        off = (healthy > self._floor + 0.05 * np.nan_to_num(self._spread)).sum(0)
        self._seen[ok] += len(healthy)
        self._off[ok] += off[ok]

    def _quiet_by_chance(self, values: np.ndarray, c: int) -> bool:
        """Whether a channel that barely moved in this batch sat at its floor no more than a
        sparse channel does now and then: few values off the floor, and as few as that not
        improbable (binomial) even at the low end (0.1 % bound) of the fraction off the floor
        its history shows."""
        level = self._floor[c] + 0.05 * self._spread[c]
        if np.median(values) > level or self._seen[c] == 0:
            return False
        k, n = self._off[c], self._seen[c]
        rate = beta.ppf(1e-3, k, n - k + 1) if k > 0 else 0.0
        return bool(binom.cdf(int((values > level).sum()), len(values), rate) > QUIET_P)

    def _against_model(self, measured, predicted, spread, live, found) -> None:
        """Against the model's prediction. Healthy hardware departs from its model by read
        noise and programming errors, about equally on every channel (a channel with little
        signal is then poorly correlated, yet healthy): a channel is judged by its residual
        against the other channels' (their lower quartile, robust to many broken ones)."""
        if not live.any():
            return
        ref_spread = predicted.std(0)
        residual = (measured - predicted).std(0)
        floor = max(float(np.quantile(residual[live], 0.25)), MIN_SPREAD)  # the hardware's usual residual
        # stuck: the model predicts variation well above the usual residual, the channel shows none
        for c in np.flatnonzero(live & (ref_spread > 2 * floor) & (spread <= MIN_SPREAD)):
            found.setdefault(int(c), ChannelFault(Diagnosis.STUCK, f"at {measured[0, c]:.3g} while the model "
                                                                  f"predicts a spread of {ref_spread[c]:.3g}"))
        m = measured - measured.mean(0)
        p = predicted - predicted.mean(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = (m * p).sum(0) / np.sqrt((m**2).sum(0) * (p**2).sum(0))
        outlier = residual > OUTLIER * floor
        for c in np.flatnonzero(live & outlier & (spread > MIN_SPREAD) & (corr < MIN_CORRELATION)):
            found.setdefault(int(c), ChannelFault(Diagnosis.UNCORRELATED, f"r = {corr[c]:.2f} against the model, "
                                                      f"residual {residual[c] / floor:.0f}x the other channels'"))
        # a channel the model holds constant (a dead ReLU) that moves far beyond the noise: garbage
        for c in np.flatnonzero(~live & outlier & (spread > MIN_SPREAD)):
            found.setdefault(int(c), ChannelFault(Diagnosis.SPURIOUS, f"spread {spread[c]:.3g} where the model "
                                                      f"predicts a constant (the other channels' residual: "
                                                      f"{floor:.3g})"))
        grown = (live & np.isfinite(self._noise) & (residual > NOISE_GROWTH * self._noise)
                 & (residual > NOISY * floor))
        for c in np.flatnonzero(grown):
            found.setdefault(int(c), ChannelFault(Diagnosis.NOISIER, f"residual grew "
                                                      f"{residual[c] / self._noise[c]:.1f}x against its history"))
        fresh = live & np.isnan(self._noise) & (residual > 0)
        self._noise = np.where(fresh, residual, self._noise)


def _live(spread: np.ndarray) -> np.ndarray:
    """The channels whose spread says they carry signal: above MIN_SPREAD, and not tiny
    against the others (a nearly dead ReLU reads exactly 0 on the hardware, which is fine)."""
    live = spread > MIN_SPREAD
    if live.any():
        live &= spread > LIVE_FRACTION * np.median(spread[live])
    return live


def significant_drop(before: float, now: float, n: int) -> bool:
    """Whether a test accuracy fell from `before` to `now` (n test samples) by more than
    ACCURACY_DROP and by more than re-measuring the same network can explain (3 sigma of the
    difference of two accuracies)."""
    p = min(max(float(before), 0.0), 1.0)
    noise = 3 * math.sqrt(2 * p * (1 - p) / max(int(n), 1))
    return before - now > max(ACCURACY_DROP, noise)


def describe_channels(reasons: dict[int, ChannelFault]) -> str:
    """Broken channels grouped by what is wrong with them, in one line."""
    groups: dict[str, list[int]] = {}
    for channel, reason in sorted(reasons.items()):
        groups.setdefault(reason.diagnosis.value, []).append(channel)
    return "; ".join(f"{what}: channel{'s' if len(c) > 1 else ''} {', '.join(map(str, c))}"
                     for what, c in groups.items())


def no_signal(x: np.ndarray, strict: bool = False) -> str | None:
    """Why a measured batch (rows: different inputs) carries no signal at all, or None: every
    column constant or non-finite (a saturated or dark detector, a dead board); with strict
    (inputs to train on), any non-finite value."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.size == 0:
        return None
    finite = np.isfinite(x)
    everywhere = bool(finite.all())
    if strict and not everywhere:
        return f"{int((~finite).sum())} NaN or infinite values"
    if len(x) >= 8:
        if everywhere:  # no masked copies (a training set's features: 0.9 s of 1.2 at a site)
            lo, hi = x.min(0), x.max(0)
        else:
            with np.errstate(invalid="ignore"):
                lo, hi = np.where(finite, x, np.inf).min(0), np.where(finite, x, -np.inf).max(0)
        if not (hi.astype(np.float64) - lo > MIN_SPREAD).any():
            return f"all {x.shape[1]} outputs constant or non-finite over {len(x)} different inputs"
    return None
