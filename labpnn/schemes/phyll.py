"""Scheme `phyll`: physical local learning (Momeni et al., Science 382, 1297, 2023), in the
forward-forward form (Hinton 2022): every unit learns on its own, no error crosses a unit.

The label goes into the input: x + s·P_y, P_y a fixed random pattern per class (drawn once from
the recipe's seed, unit-RMS rows), s = `label_scale` times the training inputs' RMS (additive,
so no input feature is overwritten: MNIST-1D has no blank pixels to spare). Each step the
minibatch is measured twice through the deployed network: positive samples (the true label
embedded) and negative ones (a random wrong label). A unit's goodness is the mean square of its
measured outputs; its local loss softplus(-sharpness·(G+ - G-)) asks for more goodness on
positive samples than on their negatives (the symmetric forward-forward loss, no threshold to
tune). Its gradient reaches only that unit's parameters (through its model at its measured
input). A unit's outputs are divided by their RMS (per row, digitally) before the next unit
gets them, so the next unit cannot just pass the goodness on.

Classification: the common rule of every scheme, the cascade's final pass and readout refitted
on the last unit's measured features, here with the neutral label (the mean pattern) embedded.
With `goodness_accuracy`, forward-forward's own rule as well: each test input measured with every
label embedded, the label of largest summed goodness wins (n_classes times the test set per
unit, measured), stated in an info event. docs/methods.md.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from labpnn.events import InfoEvent
from labpnn.protocols import Batch, Unit
from labpnn.run_context import RunContext
from labpnn.schemes import register_scheme
from labpnn.schemes.hardware_loop import HardwareLoop, LoopOptions, Measure, derived_seed, measured_forward


class PhyllOptions(LoopOptions):
    """`scheme: {name: phyll, epochs: 10, lr: 0.003, label_scale: 1.0, sharpness: 4.0}`."""

    label_scale: float = Field(1.0, gt=0, description="label pattern amplitude, in units of the inputs' RMS")
    sharpness: float = Field(4.0, gt=0, description="slope of the local loss in the goodness difference")
    goodness_accuracy: bool = Field(False, description="also classify by goodness per label (measured)")


def normalised(h):
    """Rows divided by their RMS (tensors or arrays): what a unit passes to the next one."""
    if isinstance(h, torch.Tensor):
        return h / (h.pow(2).mean(1, keepdim=True).sqrt() + 1e-6)
    return (h / (np.sqrt(np.mean(np.square(h), 1, keepdims=True)) + 1e-6)).astype(np.float32)


def goodness(z: torch.Tensor) -> torch.Tensor:
    """Mean square of each row: a unit's goodness."""
    return z.pow(2).mean(1)


class Phyll(HardwareLoop):
    name = "phyll"

    def digital(self, ctx: RunContext) -> nn.Module:
        x = ctx.dataset.x_train
        gen = torch.Generator().manual_seed(derived_seed(ctx.seed, "phyll labels"))
        patterns = torch.randn(ctx.dataset.n_classes, x.shape[1], generator=gen)
        patterns /= patterns.pow(2).mean(1, keepdim=True).sqrt()
        holder = nn.Module()  # buffers only: fixed, saved with the state
        holder.register_buffer("patterns", patterns * self.options.label_scale * float(np.sqrt(np.mean(x ** 2))))
        self.parts, self.seed = holder, ctx.seed  # embed() and the negatives' seeds use them
        return holder

    def embed(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """x with each row's label pattern added (None: the neutral, mean pattern)."""
        p = self.parts.patterns
        return x + (p.mean(0) if labels is None else p[labels])

    def loss(self, units: list[Unit], digital: nn.Module, measure: Measure, batch: Batch,
             step: int) -> tuple[torch.Tensor, list[float], dict[str, float]]:
        y = batch.targets["y"]
        n_classes = digital.patterns.shape[0]
        gen = torch.Generator().manual_seed(derived_seed(self.seed, f"phyll negatives {step}"))
        wrong = (y + torch.randint(1, n_classes, y.shape, generator=gen)) % n_classes
        h = torch.cat([self.embed(batch.x, y), self.embed(batch.x, wrong)])
        outputs = measured_forward(units, measure, h, chain=False, between=normalised)
        losses, values = [], {}
        for index, z in enumerate(outputs):
            g = goodness(z)
            g_pos, g_neg = g[:len(y)], g[len(y):]
            losses.append(nn.functional.softplus(-self.options.sharpness * (g_pos - g_neg)).mean())
            values[f"separation_{index}"] = (g_pos > g_neg).float().mean().item()
        return sum(losses), [v.item() for v in losses], values

    def unit_input(self, index: int, h: np.ndarray) -> np.ndarray:
        if index == 0:
            return self.embed(torch.as_tensor(h), None).numpy()
        return normalised(h)

    def after(self, ctx: RunContext, digital: nn.Module) -> None:
        if not self.options.goodness_accuracy:
            return
        ds = ctx.dataset
        x = torch.as_tensor(ds.x_test)
        scores = np.zeros((len(x), digital.patterns.shape[0]))
        for label in range(scores.shape[1]):
            h = self.embed(x, torch.full((len(x),), label)).numpy()
            for index, unit in enumerate(ctx.units):
                m = ctx.measure(index, None, unit, h, "goodness", monitor=False)
                self.cost.final_samples += len(h) * ctx.recipe.measure.repeats
                scores[:, label] += goodness(torch.as_tensor(m)).numpy()
                h = normalised(m)
        value = float((scores.argmax(1) == ds.y_test).mean())
        ctx.emit(InfoEvent(text=f"phyll: goodness-per-label accuracy, test: {100 * value:.2f} % "
                                f"({scores.shape[1]} labels x {len(x)} inputs measured per unit)"))


register_scheme("phyll", PhyllOptions, Phyll)
