"""Scheme `dfa`: direct feedback alignment (Nøkland, NeurIPS 2016).

Each step, the minibatch is measured through every deployed unit in turn (as in pat), a digital
readout (Linear to the classes) maps the last unit's measured outputs to logits, and the output
error e = softmax(logits) - onehot(y) goes to every unit through its own fixed random feedback
matrix B_l (classes x outputs, drawn once from the recipe's seed, never trained): unit l's
update is local, dW_l ∝ -h_{l-1}^T [(e B_l) ⊙ f'(a_l)], h_{l-1} its measured input, a_l its
pre-activation, f' from its model at that input. No error travels back through any unit; the
readout learns from its own cross-entropy gradient. The end: the cascade's final pass and the
common refitted readout (labpnn.schemes.hardware_loop); docs/methods.md.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from labpnn.protocols import Batch, Unit
from labpnn.run_context import RunContext
from labpnn.schemes import register_scheme
from labpnn.schemes.hardware_loop import (
    HardwareLoop, LoopOptions, Measure, derived_seed, measured_forward, readout_layer,
)


class DfaOptions(LoopOptions):
    """`scheme: {name: dfa, epochs: 10, lr: 0.003, feedback_scale: 1.0}`."""

    feedback_scale: float = Field(1.0, gt=0, description="entries of B_l ~ N(0, (scale / sqrt(classes))^2)")


def feedback_matrices(seed: int, n_classes: int, widths: list[int], scale: float) -> list[torch.Tensor]:
    """The fixed random feedback matrices B_l (n_classes, width_l), from `seed` alone."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n_classes, w, generator=gen) * (scale / n_classes ** 0.5) for w in widths]


class Dfa(HardwareLoop):
    name = "dfa"

    def digital(self, ctx: RunContext) -> nn.Module:
        holder = nn.Module()
        holder.readout = readout_layer(ctx, "dfa readout")
        matrices = feedback_matrices(derived_seed(ctx.seed, "dfa feedback"), ctx.dataset.n_classes,
                                     [u.out_features for u in ctx.units], self.options.feedback_scale)
        for index, b in enumerate(matrices):  # buffers: saved with the state, never optimised
            holder.register_buffer(f"feedback{index}", b)
        return holder

    def loss(self, units: list[Unit], digital: nn.Module, measure: Measure, batch: Batch,
             step: int) -> tuple[torch.Tensor, list[float], dict[str, float]]:
        y = batch.targets["y"]
        outputs = measured_forward(units, measure, batch.x, chain=False)
        logits = digital.readout(outputs[-1].detach())
        ce = nn.functional.cross_entropy(logits, y)
        error = (torch.softmax(logits, 1) - nn.functional.one_hot(y, logits.shape[1])).detach() / len(y)
        # sum_l <z_l, e B_l>: its gradient in unit l's parameters is the DFA update
        local = sum((z * (error @ getattr(digital, f"feedback{i}"))).sum() for i, z in enumerate(outputs))
        accuracy = (logits.argmax(1) == y).float().mean().item()
        return ce + local, [ce.item()] * len(units), {"ce": ce.item(), "batch_accuracy": accuracy}


register_scheme("dfa", DfaOptions, Dfa)
