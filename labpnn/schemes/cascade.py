"""The cascade: a deep PNN trained unit by unit in deploy-measure-retrain cycles (supervised).

For unit l: optimise its model with its objective on the measured outputs of unit l-1, deploy
it to the instrument (read back), measure it over the training and test data, checkpoint. Then
the digital readout on the last unit's measured features. With `faults.verify`, the deployed
network is measured again on the test set, channel by channel, and a fault found then (broken
channels, or an accuracy drop with every channel passing) is recovered from as a new revision:
the faulty unit re-measured as it is now, every later unit retrained on those measurements.

Measurement as augmentation (`pib.copies`, `pib.cycles`, docs/pib-tuning.md): with copies c > 1,
each unit's training set is measured c - 1 more times (fresh read noise; not in the run file, so
measured again on a resume) and the next unit trains on all c copies; with cycles N > 0, every
unit is optimised, deployed and measured N more times (revisions 1..N), each time re-optimised
against its own measured outputs (z = model(h) + (measured - model's output then), the value
the hardware gave, the gradient of the model), the readout on revision N.

Objectives that read two augmented views ("x2", "h2": pib-2view) get them from labpnn.views:
both views of every training input measured through each unit, never a label; the run then
ends with the linear evaluation (labpnn.linear_eval) of the last unit, recorded as "linear".
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from labpnn import readout, views
from labpnn.batches import sampler
from labpnn.errors import ConfigError
from labpnn.events import Accuracy, Fault, FaultKind, InfoEvent, PhaseStarted, Recovered
from labpnn.health import describe_channels, significant_drop
from labpnn.linear_eval import linear_probe
from labpnn.protocols import Batch, Objective, Unit
from labpnn.run_context import READOUT, RunContext
from labpnn.schemes import register_scheme


class CascadeOptions(BaseModel):
    """`scheme: cascade` takes no options (verification and recovery: the recipe's `faults:`)."""

    model_config = ConfigDict(extra="forbid")


class AtMeasured:
    """An objective evaluated at a unit's measured outputs: model(h) + dz, dz = the measured
    output minus the model's own output when it was measured (the batch's target "dz", fixed):
    the value the hardware gave, the gradient of the model."""

    def __init__(self, inner: Objective):
        self.inner, self.name, self.needs = inner, inner.name, inner.needs

    def parameters(self):
        return self.inner.parameters()

    def loss(self, model, batch: Batch):
        return self.inner.loss(lambda h: model(h) + batch.targets["dz"], batch)


def cycles_of(ctx: RunContext) -> int:
    """`pib.cycles`, which must be the same for every unit (they go through revisions together)."""
    n = ctx.recipe.pib.cycles
    for i in range(len(ctx.units)):
        if ctx.recipe.unit_pib(i).cycles != n:
            raise ConfigError(f"units.{i}.pib.cycles: every unit goes through the same cycles; set "
                              f"pib.cycles for the whole recipe ({n}), not per unit")
    if n and views.wanted(ctx):
        raise ConfigError("pib.cycles: not available with objectives that read two views (pib-2view)")
    return n


class Cascade:
    name = "cascade"

    def run(self, ctx: RunContext) -> None:
        ds = ctx.dataset
        h_train, h_test, copies = ds.x_train, ds.x_test, []
        pair = views.Views(ctx) if views.wanted(ctx) else None
        cycles = cycles_of(ctx)
        for index, unit in enumerate(ctx.units):
            if not ctx.done(index, 0, "measured"):
                ctx.inject(index)
            f_train, f_test = self.unit(ctx, index, 0, unit, h_train, h_test, pair, copies=copies)
            own = self.copies(ctx, index, unit, h_train, f_train, cycles)
            for rev in range(1, cycles + 1):
                f_train, f_test = self.unit(ctx, index, rev, unit, h_train, h_test, copies=copies,
                                            measured=own)
                own = self.copies(ctx, index, unit, h_train, f_train, cycles)
            h_train, h_test, copies = f_train, f_test, own[1:]
        accuracy = ctx.readout(h_train, h_test, cycles)
        if pair is not None:
            self.linear(ctx, 0, h_train, h_test)
        if ctx.recipe.faults.verify:
            ctx.inject("verify")
            self.verify(ctx, accuracy)

    def copies(self, ctx: RunContext, index: int, unit: Unit, h_train: np.ndarray, f_train: np.ndarray,
               cycles: int) -> list[np.ndarray]:
        """The unit's measured training features (as logged) and `pib.copies` - 1 more
        measurements of them (fresh noise), when a next unit or a cycle trains on them."""
        n = ctx.recipe.unit_pib(index).copies
        if n == 1 or (index == len(ctx.units) - 1 and not cycles):
            return [f_train]
        ctx.ensure_deployed(index, unit)
        return [f_train] + [ctx.measure(index, None, unit, h_train, "train") for _ in range(n - 1)]

    def unit(self, ctx: RunContext, index: int, rev: int, unit: Unit, h_train: np.ndarray, h_test: np.ndarray,
             pair: views.Views | None = None, train: bool = True, copies: list[np.ndarray] = (),
             measured: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Optimise (with train False: keep the previous revision's parameters), deploy and
        measure one unit on its inputs (and on `pair`'s two views, which it then carries one
        unit on); returns its measured (train, test) features. `copies`: more measurements of
        h_train it trains on too; `measured`: its own measured outputs of h_train (revision
        rev - 1), to re-optimise against."""
        if not train:
            ctx.keep_parameters(index, rev, unit)
        elif ctx.done(index, rev, "optimised"):
            ctx.restore(index, rev, unit)
        else:
            settings = ctx.recipe.unit_pib(index)
            seed = ctx.unit_seed(index, rev)
            if pair is not None:
                ctx.optimise(index, rev, unit, pair.sample(ctx, index, rev, unit, settings.batch_size))
            elif measured is not None:
                self.reoptimise(ctx, index, rev, unit, h_train, measured)
            else:
                inputs = [h_train, *copies]
                h = np.concatenate([ctx.prepare(index, unit, c) for c in inputs])
                targets = {k: np.concatenate([v] * len(inputs)) for k, v in ctx.supervised_targets().items()}
                x = np.concatenate([ctx.dataset.x_train] * len(inputs))
                ctx.optimise(index, rev, unit, sampler(x, h, targets, settings.batch_size, seed))
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

    def reoptimise(self, ctx: RunContext, index: int, rev: int, unit: Unit, h_train: np.ndarray,
                   measured: list[np.ndarray]) -> None:
        """Revision `rev` of the unit optimised from revision rev - 1 against its measured outputs
        of h_train (each measured copy gives a row per input), `pib.cycle_steps` steps (default steps // 4)."""
        settings = ctx.recipe.unit_pib(index)
        ctx.restore(index, rev - 1, unit)
        inputs = ctx.prepare(index, unit, h_train)
        with torch.no_grad():
            ideal = unit.model()(torch.as_tensor(inputs)).numpy()
        k = len(measured)
        targets = {name: np.concatenate([v] * k) for name, v in ctx.supervised_targets().items()}
        targets["dz"] = np.concatenate([m - ideal for m in measured])
        sample = sampler(np.concatenate([ctx.dataset.x_train] * k), np.concatenate([inputs] * k), targets,
                         settings.batch_size, ctx.unit_seed(index, rev))
        ctx.optimise(index, rev, unit, sample, objective=AtMeasured(ctx.objective(index)),
                     steps=settings.steps_per_cycle)

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
