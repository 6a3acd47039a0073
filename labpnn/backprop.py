"""The end-to-end backprop baseline: the same architecture as a recipe's deep PNN, trained in
silico with cross-entropy through every layer, then deployed on the bench layer by layer
through the same units (CrossbarUnit.deploy / measure), with no retraining.

    net = backprop.train(recipe, ds, BackpropSettings(epochs=30))
    ideal = backprop.accuracy(net, ds.x_test, ds.y_test)          # in silico
    result = backprop.deploy(net, recipe, bench, ds)               # on the instruments
    result.test_accuracy                                           # after deployment

The architecture: one Linear(in, out) + activation per crossbar unit of the recipe (the model
each CrossbarUnit trains with PIB), then a digital Linear(last_out, n_classes) readout, the
counterpart of the PIB run's digital readout. After deployment the readout is the trained one
applied to the measured features of the last unit: the network is used as trained, which is
what deploying an in-silico network on analog hardware means. The same network through the
engine, with its readout refitted on the measured features or the layers above each deployed
one fine-tuned on its measured outputs, is the scheme `backprop` (labpnn/schemes/backprop.py).

Only crossbar units have an in-silico model that is the physics (a matrix product); a
scattering unit's optical projection and binary encoding have no gradient, so recipes with
scattering units are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from labpnn.errors import ConfigError
from labpnn.units import build_units
from labpnn.units.base import Activation

if TYPE_CHECKING:  # the scheme `backprop` imports this module while labpnn.recipe loads
    from labpnn.bench import Bench
    from labpnn.data import Dataset
    from labpnn.recipe import Recipe

__all__ = ["BackpropSettings", "BackpropNet", "DeployResult", "accuracy", "build_network", "deploy",
           "readout_params", "train", "train_layers"]


class BackpropSettings(BaseModel):
    """How the baseline is trained (Adam on minibatches, cross-entropy, fixed epochs)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0, description="initialisation and minibatch order")


class BackpropNet(nn.Module):
    """layers[i] = Sequential(Linear, Activation) with the keys of CrossbarUnit.model(); readout
    a digital Linear to the classes."""

    def __init__(self, sizes: list[int], activations: list[str], biases: list[bool], n_classes: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b, bias=bias), Activation(act))
            for a, b, act, bias in zip(sizes[:-1], sizes[1:], activations, biases))
        self.readout = nn.Linear(sizes[-1], n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.features(x))


def _check_crossbar_only(recipe: Recipe) -> None:
    other = [f"{i} ({u.kind})" for i, u in enumerate(recipe.units) if u.kind != "crossbar"]
    if other:
        raise ConfigError(f"recipe {recipe.name!r}: the backprop baseline needs crossbar units only "
                          f"(a differentiable model of the physics); unit(s) {', '.join(other)} are not")


def build_network(recipe: Recipe, in_features: int, n_classes: int, seed: int = 0) -> BackpropNet:
    """The recipe's architecture, initialised from `seed`."""
    _check_crossbar_only(recipe)
    sizes = [int(in_features)] + [u.out for u in recipe.units]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BackpropNet(sizes, [u.activation for u in recipe.units], [u.bias for u in recipe.units],
                           n_classes)


def train(recipe: Recipe, ds: Dataset, settings: BackpropSettings | None = None,
          on_epoch: Callable[[int, float], None] | None = None) -> BackpropNet:
    """End-to-end backprop of the recipe's architecture on ds.x_train (deterministic per seed);
    on_epoch(epoch, mean loss) after every epoch (a scheme's pause/abort checkpoint, progress)."""
    s = settings or BackpropSettings()
    net = build_network(recipe, ds.x_train.shape[1], ds.n_classes, s.seed)
    return train_layers(net, 0, ds.x_train, ds.y_train, s, on_epoch)


def train_layers(net: BackpropNet, start: int, x: np.ndarray, y: np.ndarray, settings: BackpropSettings,
                 on_epoch: Callable[[int, float], None] | None = None) -> BackpropNet:
    """Train net.layers[start:] and the readout, from their current weights, on `x`, the inputs
    of layer `start` (start 0: the data; start l: layer l-1's measured outputs, the chip-in-the-
    loop fine-tuning of the layers above a deployed one; start len(layers): the readout alone)."""
    s = settings
    head = nn.Sequential(*net.layers[start:], net.readout)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    opt = torch.optim.Adam(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(s.seed)
    net.train()
    for epoch in range(s.epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for begin in range(0, len(x), s.batch_size):
            idx = order[begin:begin + s.batch_size]
            loss = nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, total / len(x))
    net.eval()
    return net


@torch.no_grad()
def accuracy(net: BackpropNet, x: np.ndarray, y: np.ndarray) -> float:
    """In-silico accuracy (the ideal network)."""
    logits = net(torch.as_tensor(x, dtype=torch.float32))
    return float((logits.argmax(1).numpy() == np.asarray(y)).mean())


def readout_params(net: BackpropNet) -> dict[str, np.ndarray]:
    """The trained readout in labpnn.readout's form (standardisation: none)."""
    w = net.readout.weight.detach().numpy().astype(np.float32)
    return {"weight": w, "bias": net.readout.bias.detach().numpy().astype(np.float32),
            "mean": np.zeros(w.shape[1], np.float32), "std": np.ones(w.shape[1], np.float32)}


@dataclass
class DeployResult:
    """The baseline after deployment on the bench."""

    test_accuracy: float
    train_accuracy: float | None
    test_features: np.ndarray                 # measured output of the last unit (n_test, out)
    deployed: list[dict[str, np.ndarray]]     # each unit's deploy() read-back
    weight_error: list[float] = field(default_factory=list)  # RMS(W_eff - W) / RMS(W), per unit
    feature_error: list[float] = field(default_factory=list)  # RMS(measured - ideal) / RMS(ideal), test


@torch.no_grad()
def deploy(net: BackpropNet, recipe: Recipe, bench: Bench, ds: Dataset, *, train_split: bool = False) -> DeployResult:
    """Put each layer of `net` on the recipe's instruments through the recipe's units, layer by
    layer (deploy layer l, measure every input through it, go on with the measured outputs),
    then apply the trained readout. Nothing is retrained. Instruments are connected if needed
    and left in their safe state. With train_split, the training set is measured too."""
    _check_crossbar_only(recipe)
    units = build_units(recipe, bench, ds.x_train.shape[1])
    if len(units) != len(net.layers):
        raise ValueError(f"net has {len(net.layers)} layers, recipe {recipe.name!r} {len(units)} units")
    names = recipe.instruments()
    for name in names:
        if not bench[name].connected:
            bench[name].connect()
    splits = {"test": ds.x_test} | ({"train": ds.x_train} if train_split else {})
    ideal = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in splits.items()}
    size, repeats = recipe.measure.batch_size, recipe.measure.repeats
    deployed, w_err, f_err = [], [], []
    try:
        for unit, layer in zip(units, net.layers):
            unit.model().load_state_dict(layer.state_dict())
            readback = unit.deploy()
            deployed.append(readback)
            lin = layer[0]
            w = lin.weight.numpy().T
            if lin.bias is not None:
                w = np.vstack([w, lin.bias.numpy()[None, :]])
            w_err.append(float(np.sqrt(np.mean((readback["weights"] - w) ** 2) / np.mean(w ** 2))))
            for k, h in splits.items():
                splits[k] = np.concatenate([
                    np.mean([unit.measure(h[i:i + size]) for _ in range(repeats)], axis=0, dtype=np.float32)
                    for i in range(0, len(h), size)])
                ideal[k] = layer(ideal[k])
            ref = ideal["test"].numpy()
            f_err.append(float(np.sqrt(np.mean((splits["test"] - ref) ** 2) / max(np.mean(ref ** 2), 1e-30))))
    finally:
        bench.safe_state(names)

    def acc(f: np.ndarray, y: np.ndarray) -> float:
        return float((net.readout(torch.as_tensor(f)).argmax(1).numpy() == y).mean())

    return DeployResult(test_accuracy=acc(splits["test"], ds.y_test),
                        train_accuracy=acc(splits["train"], ds.y_train) if train_split else None,
                        test_features=splits["test"], deployed=deployed, weight_error=w_err,
                        feature_error=f_err)
