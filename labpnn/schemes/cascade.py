"""The cascade: a deep PNN trained unit by unit in deploy-measure-retrain cycles (supervised).

For unit l: optimise its model with its objective on the measured outputs of unit l-1, deploy
it to the instrument (read back), measure it over the training and test data, checkpoint. Then
the digital readout on the last unit's measured features. With `faults.verify`, the deployed
network is measured again on the test set, channel by channel, and a fault found then (broken
channels, or an accuracy drop with every channel passing) is recovered from as a new revision:
the faulty unit re-measured as it is now, every later unit retrained on those measurements.

Objectives that read two augmented views ("x2", "h2": pib-2view) get them from labpnn.views:
both views of every training input measured through each unit, never a label; the run then
ends with the linear evaluation (labpnn.linear_eval) of the last unit, recorded as "linear".
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from labpnn import readout, views
from labpnn.batches import sampler
from labpnn.events import Accuracy, Fault, FaultKind, InfoEvent, PhaseStarted, Recovered
from labpnn.health import describe_channels, significant_drop
from labpnn.linear_eval import linear_probe
from labpnn.protocols import Unit
from labpnn.run_context import READOUT, RunContext
from labpnn.schemes import register_scheme


class CascadeOptions(BaseModel):
    """`scheme: cascade` takes no options (verification and recovery: the recipe's `faults:`)."""

    model_config = ConfigDict(extra="forbid")


class Cascade:
    name = "cascade"

    def run(self, ctx: RunContext) -> None:
        ds = ctx.dataset
        h_train, h_test = ds.x_train, ds.x_test
        pair = views.Views(ctx) if views.wanted(ctx) else None
        for index, unit in enumerate(ctx.units):
            if not ctx.done(index, 0, "measured"):
                ctx.inject(index)
            h_train, h_test = self.unit(ctx, index, 0, unit, h_train, h_test, pair)
        accuracy = ctx.readout(h_train, h_test, 0)
        if pair is not None:
            self.linear(ctx, 0, h_train, h_test)
        if ctx.recipe.faults.verify:
            ctx.inject("verify")
            self.verify(ctx, accuracy)

    def unit(self, ctx: RunContext, index: int, rev: int, unit: Unit, h_train: np.ndarray, h_test: np.ndarray,
             pair: views.Views | None = None, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Optimise (with train False: keep the previous revision's parameters), deploy and
        measure one unit on its inputs (and on `pair`'s two views, which it then carries one
        unit on); returns its measured (train, test) features."""
        if not train:
            ctx.keep_parameters(index, rev, unit)
        elif ctx.done(index, rev, "optimised"):
            ctx.restore(index, rev, unit)
        else:
            settings = ctx.recipe.unit_pib(index)
            if pair is not None:
                sample = pair.sample(ctx, index, rev, unit, settings.batch_size)
            else:
                sample = sampler(ctx.dataset.x_train, ctx.prepare(index, unit, h_train), ctx.supervised_targets(),
                                 settings.batch_size, ctx.unit_seed(index, rev))
            ctx.optimise(index, rev, unit, sample)
        if ctx.done(index, rev, "measured"):
            if pair is not None:  # the views are not in the run file: measured again
                pair.measure(ctx, index, unit)
            return ctx.log.read_features(index, rev, "train"), ctx.log.read_features(index, rev, "test")
        ctx.deploy(index, rev, unit)
        # re-measuring unchanged parameters: the previous revision is the channels' history
        reference = ctx.log.read_features(index, rev - 1, "train") if rev > 0 and not train else None
        monitor = ctx.monitor(index, reference)  # one history for both splits
        f_train = ctx.measure(index, rev, unit, h_train, "train", monitor=monitor)
        f_test = ctx.measure(index, rev, unit, h_test, "test", monitor=monitor)
        ctx.checkpoint_phase(index, rev, "measured")
        ctx.probe(index, rev, f_train, f_test)
        if pair is not None:
            pair.measure(ctx, index, unit)
        return f_train, f_test

    def linear(self, ctx: RunContext, rev: int, f_train: np.ndarray, f_test: np.ndarray) -> float:
        """The linear evaluation of the frozen units: logistic regression on the last unit's
        measured features (recorded as accuracy "linear"); its test accuracy."""
        ds = ctx.dataset
        value = linear_probe(f_train, ds.y_train, f_test, ds.y_test)
        ctx.emit(Accuracy(unit=len(ctx.units) - 1, split="test", value=value, what="linear", revision=rev))
        return value

    def verify(self, ctx: RunContext, accuracy_before: float) -> None:
        """Re-measure the deployed network on the test set, channel by channel; recover from a
        fault by retraining every unit downstream of the first faulty one."""
        ds, units = ctx.dataset, ctx.units
        ctx.emit(PhaseStarted(phase="verify", steps=len(units)))
        known = {i: set(ctx.faulty(i)) for i in range(len(units))}
        h, first = ds.x_test, None
        for index, unit in enumerate(units):
            ctx.ensure_deployed(index, unit)
            # the channels' history: the unit's test set as measured when it was trained
            reference = ctx.log.read_features(index, ctx.last_revision(index), "test")
            # downstream of a broken unit, channels see corrupted inputs: measured, not judged
            monitor = ctx.monitor(index, reference) if first is None else False
            h = ctx.measure(index, None, unit, h, "verify", monitor=monitor)
            if first is None and set(ctx.faulty(index)) - known[index]:
                first = index
        accuracy_now = readout.accuracy(ctx.readout_params, h, ds.y_test)
        ctx.emit(Accuracy(split="test", value=accuracy_now, what="verify", revision=ctx.last_revision(len(units) - 1)))
        kind, message = FaultKind.BROKEN_CHANNELS, describe_channels(ctx.faulty(first)) if first is not None else ""
        if first is None and significant_drop(accuracy_before, accuracy_now, len(ds.y_test)):
            first, kind, policy = 0, FaultKind.ACCURACY_DROP, ctx.policy
            message = (f"test accuracy fell from {100 * accuracy_before:.1f} % to {100 * accuracy_now:.1f} % on the "
                       "hardware although every channel passes its checks (drift, stuck cells?)")
            ctx.emit(Fault(fault=kind, action=policy.name, detail=f"verification: {message}",
                           then=policy.accuracy_drop_then(), accuracy_before=accuracy_before,
                           accuracy_after_fault=accuracy_now, pending=not policy.records_at_verify))
            policy.after_accuracy_drop(ctx.control, message)
        if first is None:
            ctx.emit(InfoEvent(text="verification: every channel healthy"))
            return
        recovered = self.recover(ctx, first)
        ctx.emit(Recovered(unit=first, fault=kind, channels=tuple(sorted(ctx.faulty(first))), action=ctx.policy.name,
                           detail=message, accuracy_before=accuracy_before, accuracy_after_fault=accuracy_now,
                           accuracy_recovered=recovered))

    def recover(self, ctx: RunContext, first: int) -> float:
        """A new revision: unit `first` re-measured as it is now, every later unit retrained on
        those measurements, a new readout. Returns the new test accuracy."""
        rev = max(r for u, r, _ in ctx.log.checkpoints() if u == first)
        if rev == 0 or ctx.done(READOUT, rev, "optimised"):
            rev += 1  # a new revision, unless a recovery cut short (killed, aborted) is resumed
        if first > 0:
            last = ctx.last_revision(first - 1)
            h_train, h_test = (ctx.log.read_features(first - 1, last, s) for s in ("train", "test"))
        else:
            h_train, h_test = ctx.dataset.x_train, ctx.dataset.x_test
        pair = views.Views(ctx) if views.wanted(ctx) else None
        if pair is not None:
            for index in range(first):  # the views through the units before the faulty one
                pair.measure(ctx, index, ctx.units[index])
        for index in range(first, len(ctx.units)):
            h_train, h_test = self.unit(ctx, index, rev, ctx.units[index], h_train, h_test, pair,
                                        train=index > first)
        accuracy = ctx.readout(h_train, h_test, rev)
        if pair is not None:
            self.linear(ctx, rev, h_train, h_test)
        return accuracy


register_scheme("cascade", CascadeOptions, lambda options: Cascade())
