"""Scheme `pat`: physics-aware training (Wright et al., Nature 601, 549, 2022).

Each step, the forward pass runs on the hardware: the minibatch measured through every deployed
unit in turn, each unit fed the previous one's measured outputs, then a digital readout
(Linear to the classes). The backward pass runs through the digital model: the cross-entropy's
gradient carried back through each unit's model (CrossbarUnit: Linear + activation) evaluated
at that unit's measured input, so the hardware's errors are in the forward values the gradient
is computed around, not in a model of them. Deployments every `deploy_every` steps (1: every
step, the paper's setting). The end: the cascade's final pass and common refitted readout
(labpnn.schemes.hardware_loop); docs/methods.md.
"""

from __future__ import annotations

import torch
from torch import nn

from labpnn.protocols import Batch, Unit
from labpnn.run_context import RunContext
from labpnn.schemes import register_scheme
from labpnn.schemes.hardware_loop import HardwareLoop, LoopOptions, Measure, measured_forward, readout_layer


class PatOptions(LoopOptions):
    """`scheme: {name: pat, epochs: 10, batch_size: 128, lr: 0.003, deploy_every: 1}`."""


class Pat(HardwareLoop):
    name = "pat"

    def digital(self, ctx: RunContext) -> nn.Module:
        holder = nn.Module()
        holder.readout = readout_layer(ctx, "pat readout")
        return holder

    def loss(self, units: list[Unit], digital: nn.Module, measure: Measure, batch: Batch,
             step: int) -> tuple[torch.Tensor, list[float], dict[str, float]]:
        z = measured_forward(units, measure, batch.x, chain=True)[-1]
        logits = digital.readout(z)
        ce = nn.functional.cross_entropy(logits, batch.targets["y"])
        accuracy = (logits.argmax(1) == batch.targets["y"]).float().mean().item()
        return ce, [ce.item()] * len(units), {"ce": ce.item(), "batch_accuracy": accuracy}


register_scheme("pat", PatOptions, Pat)
