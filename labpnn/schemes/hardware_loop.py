"""What the hardware-in-the-loop schemes (pat, dfa, phyll) share: every unit trained at once,
end to end or locally, each step's forward pass measured on the deployed hardware.

A step: the minibatch of (seed, step); every `deploy_every` steps the units' current parameters
deployed (programmed and read back; clipped like the cascade's, the unit's `clip:`); the
minibatch measured through the network, unit after unit (RunContext.measure_batch); the
scheme's loss built on the measured values (`straight_through`: the value measured, the
gradient the unit model's, evaluated at its measured input); one Adam step on the units'
models and the scheme's digital parts. Every `checkpoint_every` steps the joint state (every
model, the digital parts, the optimiser) goes into unit 0's optimiser slot and every unit gets
its loss rows, so a paused, aborted or killed run resumes there (`labpnn run --resume`).

The end is the cascade's: every unit deployed (checkpointed "deployed") and measured over the
training and test sets (health-checked, logged), its linear probe, then the common digital
readout refitted on the last unit's measured features (RunContext.readout): the run's test
accuracy, comparable across schemes. The hardware spent is counted (`HardwareCost`) and stated
in an info event.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from labpnn import state_image
from labpnn.batches import sampler
from labpnn.errors import ConfigError, RunLogError
from labpnn.events import InfoEvent, PhaseStarted, Step
from labpnn.protocols import Batch, Unit
from labpnn.run_context import RunContext

Measure = Callable[[int, np.ndarray], np.ndarray]  # (unit index, inputs) -> measured outputs


class LoopOptions(BaseModel):
    """Options every hardware-in-the-loop scheme takes (`scheme: {name: pat, lr: 0.003}`)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(10, ge=1, description="passes over the training set")
    batch_size: int = Field(128, ge=1, description="rows per step")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate (units' models and digital parts)")
    weight_decay: float = Field(0.0, ge=0)
    deploy_every: int = Field(1, ge=1, description="steps between deployments of the current parameters")
    checkpoint_every: int = Field(10, ge=1, description="steps between saved states (resume point)")


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one use (`purpose`: "batches", "feedback", ...) derived from the recipe's seed."""
    return int(np.random.SeedSequence([seed, zlib.crc32(purpose.encode())]).generate_state(1)[0])


def straight_through(z: torch.Tensor, measured: np.ndarray) -> torch.Tensor:
    """The measured values, carrying z's gradient: the backward pass goes through the model
    that computed z (at the input z was computed from), the forward value is the hardware's."""
    m = torch.as_tensor(np.asarray(measured, np.float32))
    return z + (m - z).detach()


def measured_forward(units: list[Unit], measure: Measure, h: torch.Tensor, *, chain: bool,
                     between=None) -> list[torch.Tensor]:
    """Each unit's outputs on h, measured on the hardware (`measure(index, inputs)`), with the
    gradient of its model at its measured input (straight_through). chain: gradients flow
    from a unit into the ones before it (end-to-end); otherwise each unit's input is a constant
    (local learning). `between(t)`: applied to a unit's outputs before the next one gets them."""
    outputs = []
    for index, unit in enumerate(units):
        x = h if chain else h.detach()
        z = straight_through(unit.model()(x), measure(index, x.detach().numpy()))
        outputs.append(z)
        h = between(z) if between is not None else z
    return outputs


@dataclass
class HardwareCost:
    """The hardware a run spent: deployments, measurement calls (instrument-sized batches) and
    rows measured, in training steps and in the final pass."""

    deploys: int = 0
    calls: int = 0
    samples: int = 0
    final_deploys: int = 0
    final_samples: int = 0

    def measured(self, n: int, batch_size: int, repeats: int) -> None:
        self.calls += math.ceil(n / batch_size) * repeats
        self.samples += n * repeats

    def sentence(self, name: str) -> str:
        return (f"{name}: training used {self.deploys} deployments, {self.calls} measurement calls, "
                f"{self.samples} samples measured; the final pass {self.final_deploys} deployments, "
                f"{self.final_samples} samples measured")


class HardwareLoop:
    """Base of the schemes: subclasses set `name`, build their digital parts (`digital`) and
    their loss on a minibatch (`loss`); optionally `unit_input` (what a unit gets in the final
    pass) and `after` (extra evaluation once the readout is fitted)."""

    name = "hardware-loop"

    def __init__(self, options: LoopOptions):
        self.options = options
        self.cost = HardwareCost()

    # -- what subclasses give
    def digital(self, ctx: RunContext) -> nn.Module:
        """The scheme's digital parts (trained with the units, checkpointed with them)."""
        return nn.Module()

    def loss(self, units: list[Unit], digital: nn.Module, measure: Measure, batch: Batch,
             step: int) -> tuple[torch.Tensor, list[float], dict[str, float]]:
        """(scalar to minimise, each unit's loss to log, quantities for the Step events)."""
        raise NotImplementedError

    def unit_input(self, index: int, h: np.ndarray) -> np.ndarray:
        """What unit `index` gets in the final pass: h, the network input (index 0) or the
        previous unit's measured outputs."""
        return h

    def after(self, ctx: RunContext, digital: nn.Module) -> None:
        """Anything measured once the readout is fitted (default: nothing)."""

    # -- the run
    def run(self, ctx: RunContext) -> None:
        self.check(ctx)
        units = ctx.units
        digital = self.digital(ctx)
        if all(ctx.done(i, 0, "optimised") for i in range(len(units))):
            for i, unit in enumerate(units):
                ctx.restore(i, 0, unit)
            saved = self.saved_state(ctx)
            if saved is not None:  # the training's cost, for the closing statement
                self.cost.deploys, self.cost.calls, self.cost.samples = (int(v) for v in saved[1]["cost"])
        else:
            self.train(ctx, digital)
        self.final_pass(ctx)
        self.after(ctx, digital)
        ctx.emit(InfoEvent(text=self.cost.sentence(self.name)))

    def check(self, ctx: RunContext) -> None:
        """Refuse what the scheme cannot do, naming the recipe field."""
        if getattr(ctx.dataset, "x_train", None) is None:
            raise ConfigError(f"scheme: {self.name} trains on a dataset; the recipe has none ('env:' recipes: "
                              "scheme online)")
        kinds = {u.kind for u in ctx.recipe.units}
        if kinds != {"crossbar"}:
            raise ConfigError(f"scheme: {self.name} needs crossbar units only (its backward pass or local "
                              f"update uses each unit's differentiable model); the recipe has {sorted(kinds)}")
        if ctx.recipe.faults.verify:
            raise ConfigError(f"scheme: {self.name} does not support faults.verify (its recovery retrains units "
                              "one after another: use scheme cascade)")

    def steps(self, ctx: RunContext) -> int:
        return self.options.epochs * math.ceil(len(ctx.dataset.y_train) / self.options.batch_size)

    def train(self, ctx: RunContext, digital: nn.Module) -> None:
        units, opts, ds = ctx.units, self.options, ctx.dataset
        spec = ctx.recipe.measure
        models = [u.model() for u in units]
        params = [p for m in models for p in m.parameters()] + list(digital.parameters())
        optimiser = torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
        sample = sampler(ds.x_train, ds.x_train, ctx.supervised_targets(), opts.batch_size,
                         derived_seed(ctx.seed, f"{self.name} batches"))
        total, start = self.steps(ctx), self.resume(ctx, models, digital, optimiser)
        for index in range(len(units)):
            ctx.inject(index)  # every unit is in use from the first step
        ctx.emit(PhaseStarted(phase="optimise", steps=total, start=start, what=self.name))

        def measure(index: int, h: np.ndarray) -> np.ndarray:
            self.cost.measured(len(h), spec.batch_size, spec.repeats)
            return ctx.measure_batch(index, units[index], h)

        rows: list[list[tuple[int, float, float, float]]] = [[] for _ in units]
        for step in range(start, total):
            ctx.checkpoint()
            if step == start or step % opts.deploy_every == 0:
                for index, unit in enumerate(units):
                    ctx.link.deploy(index, unit)
                    self.cost.deploys += 1
            loss, unit_losses, values = self.loss(units, digital, measure, sample(step), step)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for index, value in enumerate(unit_losses):
                rows[index].append((step, value, math.nan, math.nan))
                ctx.emit(Step(unit=index, step=step, steps=total, loss=value, values=values))
            if (step + 1) % opts.checkpoint_every == 0 or step + 1 == total:
                self.save(ctx, step, rows, models, digital, optimiser)
                rows = [[] for _ in units]
        for index, model in enumerate(models):
            ctx.log.params(index, 0, "trained", {k: v.detach().numpy() for k, v in model.state_dict().items()})
            ctx.checkpoint_phase(index, 0, "optimised")

    def save(self, ctx: RunContext, step: int, rows, models, digital, optimiser) -> None:
        """Each unit's loss rows; the joint state after `step` in unit 0's slot."""
        blob = state_image.dump({"models": [m.state_dict() for m in models], "digital": digital.state_dict(),
                                 "optimiser": optimiser.state_dict(), "cost": [self.cost.deploys, self.cost.calls,
                                                                               self.cost.samples]})
        for index, unit_rows in enumerate(rows):
            ctx.log.steps(index, 0, unit_rows, blob if index == 0 else b"")

    def saved_state(self, ctx: RunContext) -> tuple[int, dict] | None:
        """(last saved step, the joint state saved after it) from unit 0's slot, or None."""
        live = ctx.log.live_state(0, 0)
        if live is None or not live[1]:
            return None
        try:
            return live[0], state_image.load(live[1])
        except state_image.StateError as exc:
            raise RunLogError(f"{ctx.log.path}: scheme {self.name}'s state saved at step {live[0]}: {exc}") from None

    def resume(self, ctx: RunContext, models, digital, optimiser) -> int:
        """Load the last saved joint state, if any; the step to start from."""
        saved = self.saved_state(ctx)
        if saved is None:
            return 0
        last, state = saved
        try:
            for model, params in zip(models, state["models"], strict=True):
                model.load_state_dict(params)
            digital.load_state_dict(state["digital"])
            optimiser.load_state_dict(state["optimiser"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise RunLogError(f"{ctx.log.path}: cannot resume scheme {self.name} from its state saved at step "
                              f"{last}: {exc}") from None
        self.cost.deploys, self.cost.calls, self.cost.samples = (int(v) for v in state["cost"])
        ctx.emit(InfoEvent(text=f"{self.name}: resumed after step {last}"))
        return last + 1

    def final_pass(self, ctx: RunContext) -> float:
        """The cascade's end: each unit deployed, measured over both splits, probed; the
        readout refitted on the last unit's measured features. Its test accuracy."""
        ds = ctx.dataset
        h_train, h_test = ds.x_train, ds.x_test
        for index, unit in enumerate(ctx.units):
            h_train, h_test = self.unit_input(index, h_train), self.unit_input(index, h_test)
            if ctx.done(index, 0, "measured"):
                h_train, h_test = (ctx.log.read_features(index, 0, s) for s in ("train", "test"))
                continue
            ctx.deploy(index, 0, unit)
            monitor = ctx.monitor(index)  # one channel history for both splits
            h_train = ctx.measure(index, 0, unit, h_train, "train", monitor=monitor)
            h_test = ctx.measure(index, 0, unit, h_test, "test", monitor=monitor)
            self.cost.final_deploys += 1
            self.cost.final_samples += (len(h_train) + len(h_test)) * ctx.recipe.measure.repeats
            ctx.checkpoint_phase(index, 0, "measured")
            ctx.probe(index, 0, h_train, h_test)
        return ctx.readout(h_train, h_test, 0)


def readout_layer(ctx: RunContext, seed_purpose: str) -> nn.Linear:
    """The in-training digital readout: Linear(last unit's outputs, classes), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(ctx.seed, seed_purpose))
        return nn.Linear(ctx.units[-1].out_features, ctx.dataset.n_classes)
