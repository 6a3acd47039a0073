"""The scheme `backprop`: the recipe's network trained end to end in silico (labpnn.backprop),
then deployed layer by layer through the engine (deploy, measure, health checks, run file),
the way the scheme's options say:

- `readout: trained` applies the in-silico readout to the last unit's measured features (the
  network used as trained); `readout: refit` fits the engine's readout on them instead
  (ctx.readout, the rule PIB's cascade uses: Yao et al., Nature 2020);
- `finetune_epochs: n` (> 0): chip-in-the-loop fine-tuning layer by layer (Wan et al., Nature
  2022): after layer l is deployed and measured, the layers above it and the readout are trained
  n more epochs, in silico, on its measured training outputs, before layer l+1 is deployed.

Whether weights are deployed clipped is the units' `clip:` rule, as for every scheme. The run's
result is the readout's test accuracy, as the cascade's. The training split is measured only
when something is trained on it (refit, fine-tuning); then each unit is also probed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from labpnn import backprop, readout
from labpnn.events import Accuracy, InfoEvent, PhaseStarted, Step
from labpnn.run_context import READOUT, RunContext
from labpnn.schemes import register_scheme


class BackpropOptions(BaseModel):
    """`scheme: {name: backprop, ...}`: the in-silico training, the readout, the fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1, description="end-to-end training epochs, in silico")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate")
    weight_decay: float = Field(0.0, ge=0)
    readout: Literal["trained", "refit"] = Field(
        "trained", description="trained: the in-silico readout on the measured features; refit: the engine's "
                               "readout fitted on them (recipe readout:)")
    finetune_epochs: int = Field(0, ge=0, description="epochs of fine-tuning of the layers above each deployed "
                                                      "one on its measured outputs (0: none)")
    finetune_lr: float | None = Field(None, gt=0, description="its learning rate (default: lr)")


class Backprop:
    name = "backprop"

    def __init__(self, options: BackpropOptions):
        self.options = options

    def settings(self, seed: int, epochs: int | None = None, lr: float | None = None) -> backprop.BackpropSettings:
        o = self.options
        return backprop.BackpropSettings(epochs=epochs or o.epochs, batch_size=o.batch_size, lr=lr or o.lr,
                                         weight_decay=o.weight_decay, seed=seed)

    def run(self, ctx: RunContext) -> None:
        o, ds, units = self.options, ctx.dataset, ctx.units
        net = self.train(ctx)
        uses_train = o.readout == "refit" or o.finetune_epochs > 0
        f_train, f_test = ds.x_train, ds.x_test
        for index, unit in enumerate(units):
            layer = net.layers[index]
            if ctx.done(index, 0, "optimised"):  # resumed: the run file's parameters are the deployed ones
                ctx.restore(index, 0, unit)
                layer.load_state_dict(unit.model().state_dict())
            else:
                unit.model().load_state_dict(layer.state_dict())
                ctx.log.params(index, 0, "trained", {k: v.detach().numpy() for k, v in layer.state_dict().items()})
                ctx.checkpoint_phase(index, 0, "optimised")
            f_train, f_test = self.deploy_and_measure(ctx, index, unit, f_train if uses_train else None, f_test)
            above = index + 1 if index + 1 < len(units) or o.readout == "trained" else None
            if o.finetune_epochs and above is not None:
                self.finetune(ctx, net, above, f_train)
        if o.readout == "refit":
            ctx.readout(f_train, f_test, 0)
        else:
            self.trained_readout(ctx, net, f_train, f_test)

    def train(self, ctx: RunContext) -> backprop.BackpropNet:
        """The in-silico network (deterministic per recipe seed: a resumed run trains it again)."""
        epochs = self.options.epochs
        ctx.emit(PhaseStarted(phase="optimise", steps=epochs, what="backprop (end to end, in silico)"))

        def on_epoch(epoch: int, loss: float) -> None:
            ctx.emit(Step(unit=0, step=epoch, steps=epochs, loss=loss))
            ctx.checkpoint()

        net = backprop.train(ctx.recipe, ctx.dataset, self.settings(ctx.seed), on_epoch)
        ds = ctx.dataset
        ctx.emit(InfoEvent(text=f"backprop in silico: test accuracy "
                                f"{100 * backprop.accuracy(net, ds.x_test, ds.y_test):.2f} %"))
        return net

    def deploy_and_measure(self, ctx: RunContext, index: int, unit, h_train: np.ndarray | None,
                           h_test: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Deploy one layer and measure it on the test set (and the training set, if given)."""
        if ctx.done(index, 0, "measured"):
            return (None if h_train is None else ctx.log.read_features(index, 0, "train"),
                    ctx.log.read_features(index, 0, "test"))
        ctx.deploy(index, 0, unit)
        monitor = ctx.monitor(index)
        f_train = None if h_train is None else ctx.measure(index, 0, unit, h_train, "train", monitor=monitor)
        f_test = ctx.measure(index, 0, unit, h_test, "test", monitor=monitor)
        ctx.checkpoint_phase(index, 0, "measured")
        if f_train is not None:
            ctx.probe(index, 0, f_train, f_test)
        return f_train, f_test

    def finetune(self, ctx: RunContext, net: backprop.BackpropNet, start: int, f_train: np.ndarray) -> None:
        """The layers from `start` up and the readout, trained on layer start-1's measured outputs."""
        o = self.options
        ctx.emit(PhaseStarted(unit=min(start, len(ctx.units) - 1), phase="optimise", steps=o.finetune_epochs,
                              what=f"fine-tuning layers {start}.. on unit {start - 1}'s measured outputs"))

        def on_epoch(epoch: int, loss: float) -> None:
            ctx.emit(Step(unit=min(start, len(ctx.units) - 1), step=epoch, steps=o.finetune_epochs, loss=loss))
            ctx.checkpoint()

        settings = self.settings(ctx.unit_seed(start, 0), o.finetune_epochs, o.finetune_lr)
        backprop.train_layers(net, start, f_train, ctx.dataset.y_train, settings, on_epoch)

    def trained_readout(self, ctx: RunContext, net: backprop.BackpropNet, f_train: np.ndarray | None,
                        f_test: np.ndarray) -> None:
        """The network's own readout on the measured features, recorded as the run's readout."""
        ctx.checkpoint()
        ds = ctx.dataset
        if ctx.done(READOUT, 0, "optimised"):
            ctx.readout_params = ctx.log.read_readout(0)
            return
        params = backprop.readout_params(net)
        ctx.log.readout(params, 0)
        splits = [("test", f_test, ds.y_test)] + ([("train", f_train, ds.y_train)] if f_train is not None else [])
        for split, f, y in splits:
            ctx.emit(Accuracy(split=split, value=readout.accuracy(params, f, y), what="readout", revision=0))
        ctx.checkpoint_phase(READOUT, 0, "optimised")
        ctx.readout_params = params


register_scheme("backprop", BackpropOptions, lambda options: Backprop(options))
