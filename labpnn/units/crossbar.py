"""The crossbar unit: a linear layer computed in memory on a memristor crossbar, then an
activation. The bias is an extra input row driven by a constant 1.

matches(expected) reads the array twice and fits the read noise sigma(G)^2 = a + b G^2 from
the difference of the two reads. The expected read-back is itself a read of the programmed
state, so if the board still holds it, a fresh read departs from it by read noise alone, as
much as the two fresh reads depart from each other: it holds when the mean squared departure,
in units of sigma, is at most MARGIN (plus sampling error) times the two reads', and cells
beyond OUTLIER sigmas are not much more frequent. Pooled, the test rejects a blank board or
another unit's weights even at the calibrated read noise (15 % of G); a handful of stuck
cells it sees only on a quieter board (the verification's channel checks catch them). A
board reprogrammed with the same weights fails too (its programming error is new) and is
reprogrammed once more, which is safe.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from labpnn.errors import DeviceError
from labpnn.protocols import CrossbarArray, Device
from labpnn.units.base import apply_activation
from labpnn.units.base import Activation

log = logging.getLogger(__name__)

MARGIN = 1.25   # mean squared departure from the expected read-back against read noise's
OUTLIER = 5.0   # sigmas: a cell this far from the expected read-back, more often than between reads
FLOOR = 1e-3    # of g_max: the resolution below which departures do not count (a noiseless twin)


class CrossbarUnit:
    """Linear(in_features, out_features, bias) + activation, deployed on a CrossbarArray.

    Several units may share one board: a unit whose weights were replaced by another's
    programs its own again before measuring (read_back refuses instead).
    """

    def __init__(self, name: str, device: CrossbarArray, in_features: int, out_features: int,
                 activation: str = "relu", bias: bool = True, seed: int = 0, clip: float | None = None,
                 measure_format: str = "float32"):
        if not isinstance(device, CrossbarArray):
            raise TypeError(f"unit {name!r}: {type(device).__name__} is not a CrossbarArray "
                            "(program_weights, read_weights, matmul, array_shape)")
        self.name, self.device = name, device
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.activation, self.bias, self.clip = activation, bias, clip
        self.measure_format = measure_format  # how matmul's inputs and outputs travel
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._model = nn.Sequential(nn.Linear(self.in_features, self.out_features, bias=bias),
                                        Activation(activation))
        self._weights: np.ndarray | None = None  # what this unit put on the board
        self._token: object = None  # the board's deployment_id when it did

    def instruments(self) -> list[Device]:
        return [self.device]

    def prepare(self, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, dtype=np.float32)

    def model(self) -> nn.Module:
        return self._model

    def deployed_shapes(self) -> dict[str, tuple[int, ...]]:
        rows = self.in_features + self.bias
        return {"weights": (rows, self.out_features), "g_target": (rows, 2 * self.out_features),
                "g_read": (rows, 2 * self.out_features)}

    def array_attrs(self) -> dict[str, dict[str, str]]:
        rows = "input" + (" (the last row: bias)" if self.bias else "")
        attrs = {"trained/0.weight": {"axes": "revision, output, input (torch nn.Linear: "
                                               "out_features x in_features)"},
                 "deployed/weights": {"axes": f"revision, {rows}, output ([W^T; b] read back: "
                                              "(G+ - G-) / g_scale)",
                                      "units": "1 (model weight)"}}
        if self.bias:
            attrs["trained/0.bias"] = {"axes": "revision, output"}
        for name, what in (("g_target", "targets"), ("g_read", "read back")):
            attrs[f"deployed/{name}"] = {
                "axes": f"revision, {rows}, column: G+ of outputs 0..{self.out_features - 1} | "
                        f"G- of the same outputs (differential pairs; conductance {what})",
                "units": "S"}
        return attrs

    def deploy(self) -> dict[str, np.ndarray]:
        """Program [W^T; b] (in_features + 1, out_features), clipped to +-clip times its RMS
        when clip is set; return the read-back. The largest weight sets the conductance scale
        (crossbar_mapping.differential_pairs), so a few outlying weights cost every other
        weight precision against the board's fixed programming and read errors; clipped, they
        lose a little themselves, which the units after this one and the readout, trained on
        its measured outputs, absorb."""
        return self._program(self.deployment_matrix())

    def deployment_matrix(self) -> np.ndarray:
        """The matrix deploy() programs: the model's [W^T; b], clipped when clip is set."""
        w = self._model_matrix()
        if self.clip:
            bound = self.clip * float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
            w = np.clip(w, -bound, bound)
        return w

    def read_back(self) -> dict[str, np.ndarray]:
        if not self._holds_own():
            raise DeviceError(f"unit {self.name!r}: the board holds another deployment; "
                              "deploy() this unit again", self.device.name)
        return self.device.read_weights()

    def matches(self, expected: dict[str, np.ndarray]) -> bool:
        try:
            first, second = self.device.read_weights(), self.device.read_weights()
        except DeviceError:
            return False  # nothing the driver can read in this layout
        g_exp = np.asarray(expected["g_read"], dtype=np.float64)
        if first["g_read"].shape != g_exp.shape or first["weights"].shape != self.deployed_shapes()["weights"]:
            return False
        g_max = self.device.conductance_range()[1]
        # sigma at a level symmetric in the three reads: if the board holds g_exp, the three are
        # exchangeable and both means below have the same expectation
        level = (g_exp + first["g_read"] + second["g_read"]) / 3
        sigma = _read_noise(first["g_read"], second["g_read"], level)
        scale = 2 * sigma ** 2 + (FLOOR * g_max) ** 2  # of the difference of two reads, per cell
        held = (first["g_read"] - g_exp) ** 2 / scale
        noise = (first["g_read"] - second["g_read"]) ** 2 / scale
        # pooled (a blank board, another unit's weights) and per cell (a few stuck cells)
        n_held, n_noise = int(np.sum(held > OUTLIER ** 2)), int(np.sum(noise > OUTLIER ** 2))
        ok = bool(held.mean() <= (MARGIN + 8 / np.sqrt(g_exp.size)) * max(noise.mean(), 1.0)
                  and n_held <= 2 * n_noise + 3)
        if ok and self._weights is None:  # resumed: the board already holds this unit
            self._weights, self._token = first["weights"], self.device.deployment_id
        return ok

    @property
    def last_frame(self) -> None:
        """A crossbar has no image to show."""
        return None

    def measure(self, h: np.ndarray) -> np.ndarray:
        """activation(device.matmul([h, 1])), (n, out_features) float32."""
        x = self._inputs(h)
        if self._weights is not None and not self._holds_own():
            log.info("unit %r: the board holds another deployment; programming this unit's "
                     "weights again", self.name)
            self._program(self._weights)
        return apply_activation(self.activation, self.device.matmul(x, format=self.measure_format))

    def expected(self, h: np.ndarray) -> np.ndarray:
        """What measure(h) should give: the deployed weights (the model's before any
        deploy) applied digitally, float32."""
        w = self._weights if self._weights is not None else self._model_matrix()
        return apply_activation(self.activation, self._inputs(h) @ w)

    def _inputs(self, h: np.ndarray) -> np.ndarray:
        x = self.prepare(h)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"unit {self.name!r}: input of shape {x.shape}, expected "
                             f"(n, {self.in_features})")
        return np.hstack([x, np.ones((len(x), 1), np.float32)]) if self.bias else x

    def _model_matrix(self) -> np.ndarray:
        """The model's parameters as the matrix the board holds: [W^T; b]."""
        linear = self._model[0]
        with torch.no_grad():
            w = linear.weight.detach().cpu().numpy().T
            if self.bias:
                w = np.vstack([w, linear.bias.detach().cpu().numpy()[None, :]])
        return np.ascontiguousarray(w, dtype=np.float32)

    def _program(self, w: np.ndarray) -> dict[str, np.ndarray]:
        result = self.device.program_weights(w)
        self._weights, self._token = w, self.device.deployment_id
        return result

    def _holds_own(self) -> bool:
        return self.device.deployment_id == self._token


def _read_noise(first: np.ndarray, second: np.ndarray, g: np.ndarray) -> np.ndarray:
    """sigma(g) of one read, from two reads: (d^2 / 2) fitted on [1, g^2] by least squares
    weighted with the fit itself (d^2 is chi-square: its spread grows with its mean)."""
    d = (second - first).ravel().astype(np.float64)
    moved = d != 0  # cells not re-read (multiplexed groups) carry no noise information
    if moved.sum() < 2:
        return np.zeros_like(g)
    level = np.maximum(first, second).ravel()[moved].astype(np.float64)
    basis = np.stack([np.ones_like(level), level ** 2], axis=1)
    target, weight = d[moved] ** 2 / 2, np.ones_like(level)
    for _ in range(3):
        coef = np.linalg.lstsq(basis * weight[:, None], target * weight, rcond=None)[0]
        coef = np.clip(coef, 1e-30, None)
        weight = 1 / (basis @ coef)
    return np.sqrt(coef[0] + coef[1] * g ** 2)
