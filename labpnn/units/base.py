"""What every unit shares: the activation applied after the physical stage."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "clip": lambda t: t.clamp(0.0, 1.0),  # a ReLU bounded at 1: piecewise linear onto 0..1
    "none": lambda t: t,
}
BOUNDED = ("sigmoid", "clip")  # activations onto 0..1: a unit after one codes its inputs over that range


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation called `name` (one of ACTIVATIONS), for tensors."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}") from None


def apply_activation(name: str, y: np.ndarray) -> np.ndarray:
    """The same activation on a NumPy array (measured outputs), float32."""
    with torch.no_grad():
        return activation(name)(torch.as_tensor(np.asarray(y, dtype=np.float32))).numpy()


class Activation(torch.nn.Module):
    """An activation by name, as a module (it shows in the model's repr)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self._fn = activation(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return self.name
