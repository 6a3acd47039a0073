"""lightonml.opu.OPU, as lightonml 1.4 documents it, on labpnn's OPUs.

`OPU(simulated=True)` runs on the in-process twin (labpnn.sim_devices.opu.SimOPUDevice);
`opu_device=` takes any labpnn OPU front end (the twin, or labpnn.drivers.opu.OPU with
resource tcp://host:port for an OPU server); with neither, $LABPNN_OPU (tcp://host:port) names
an OPU server, and otherwise, where lightonml itself is installed, `OPU(...)` is lightonml's
own OPU (the vendor's library drives the real device; nothing here re-implements it).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import warnings
from contextlib import suppress

import numpy as np

from labpnn.drivers.opu import OPU as OPUDriver
from labpnn.instruments.opu import OPUFront
from labpnn.lightonml import verbosity
from labpnn.lightonml.context import Context, ContextArray
from labpnn.lightonml.encoding.base import NoDecoding, NoEncoding
from labpnn.lightonml.internal.types import InputRoiStrategy
from labpnn.lightonml.types import OutputRescaling
from labpnn.sim_devices.opu import SimOPUDevice
from labpnn.units.opu_encoding import instance, is_tensor, to_numpy

ENV_RESOURCE = "LABPNN_OPU"  # tcp://host:port of an OPU server, for OPU() without simulated=True
MAX_N_COMPONENTS = 1920 * 1080  # the camera of lightonml's simulated OPU
NO_OPU = ("no OPU here: lightonml is not installed and $LABPNN_OPU (tcp://host:port of an OPU "
          "server) is not set. Run on the twin with OPU(..., simulated=True), or serve one with "
          "`labpnn sim opu --tcp 127.0.0.1:PORT` and set LABPNN_OPU=tcp://127.0.0.1:PORT")


def _vendor_opu():
    """lightonml's own OPU class, or None where lightonml is not installed."""
    try:
        from lightonml import OPU as Vendor
    except ImportError:
        return None
    return Vendor


class OPU:
    """y = |R x|^2 of binary x (transform), or x R (linear_transform), as lightonml.OPU.

    Opens at construction unless open_at_init=False; `with opu:` opens it and closes it again
    only if it was closed before. fit1d / fit2d set the input size (and the twin's exposure
    from the ones in X); transform accepts 0/1 in any dtype, one vector, a batch or a 2-D
    batch, NumPy or torch, and returns a float32 ContextArray (a tensor for a tensor).
    """

    def __new__(cls, *args, **kwargs):
        simulated = kwargs.get("simulated", False)
        device = kwargs.get("opu_device", args[1] if len(args) > 1 else None)
        if not simulated and device is None and not os.environ.get(ENV_RESOURCE):
            vendor = _vendor_opu()
            if vendor is not None:  # the real OPU through the vendor's library
                return vendor(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, n_components: int = 200000, opu_device: OPUFront | None = None,
                 max_n_features: int = 1000, config_file: str = "", config_override: dict | None = None,
                 verbose_level: int = -1, input_roi_strategy: InputRoiStrategy = InputRoiStrategy.full,
                 open_at_init: bool | None = None, disable_pbar: bool = False, simulated: bool = False,
                 rescale: OutputRescaling | str = OutputRescaling.variance):
        if simulated and opu_device is not None:
            raise ValueError("simulated and opu_device arguments are conflicting")
        if verbose_level != -1:
            warnings.warn("verbose_level is deprecated: use lightonml.set_verbose_level",
                          DeprecationWarning, stacklevel=2)
            verbosity.set_verbose_level(verbose_level)
        self.config_file, self.config_override = config_file, config_override
        self.input_roi_strategy = input_roi_strategy
        self.disable_pbar = disable_pbar
        self.rescale = rescale
        if opu_device is not None:
            if not isinstance(opu_device, OPUFront):
                raise TypeError(f"opu_device must be a labpnn OPU (SimOPUDevice or "
                                f"labpnn.drivers.opu.OPU), not {type(opu_device).__name__}")
            self.device = opu_device
        elif simulated:
            self.device = SimOPUDevice(n_components, max_n_features)
        elif os.environ.get(ENV_RESOURCE):
            self.device = OPUDriver(n_components, max_n_features, resource=os.environ[ENV_RESOURCE])
        else:
            raise RuntimeError(NO_OPU)
        self._traits: tuple[tuple[int, ...], bool] | None = None  # (n_features, packed) of the fit
        self.n_components = n_components
        if max_n_features != self.device.max_n_features:  # a device sized for this OPU
            self._rebuild(max_n_features=int(max_n_features))
        if open_at_init is None or open_at_init:
            self.open()

    # -- settings ------------------------------------------------------------------------------
    @property
    def simulated(self) -> bool:
        return bool(self.device.simulated)

    @property
    def rescale(self) -> OutputRescaling:
        return self._rescale

    @rescale.setter
    def rescale(self, value: OutputRescaling | str) -> None:
        if isinstance(value, str):
            try:
                value = OutputRescaling[value.lower()]
            except KeyError:
                raise ValueError(f"rescale {value!r} is not one of "
                                 f"{[r.name for r in OutputRescaling]}") from None
        if not isinstance(value, OutputRescaling):
            raise TypeError(f"rescale must be an OutputRescaling or its name, not {value!r}")
        self._rescale = value

    @property
    def max_n_components(self) -> int:
        return MAX_N_COMPONENTS

    @property
    def n_components(self) -> int:
        return self.device.n_components

    @n_components.setter
    def n_components(self, value: int) -> None:
        if not 1 <= int(value) <= self.max_n_components:
            raise ValueError(f"n_components {value} must be in 1..{self.max_n_components}")
        if int(value) != self.device.n_components:
            self._rebuild(n_components=int(value))

    @property
    def max_n_features(self) -> int:
        return self.device.max_n_features

    @max_n_features.setter
    def max_n_features(self, value: int) -> None:
        if not self.simulated:
            raise AttributeError("max_n_feature can't be set if device is real")
        if int(value) != self.device.max_n_features:
            self._rebuild(max_n_features=int(value))

    def _rebuild(self, **dims: int) -> None:
        self.device = self.device.resized(**dims)

    # -- open / close --------------------------------------------------------------------------
    def open(self) -> None:
        """Acquire the OPU (the light source on)."""
        self.device.connect()

    def close(self) -> None:
        """Release the OPU."""
        self.device.close()

    def __enter__(self) -> OPU:
        self._open_before_enter = self.device.connected
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        if not self._open_before_enter:
            self.close()

    # -- fit -----------------------------------------------------------------------------------
    def fit1d(self, X=None, n_features: int | None = None, packed: bool = False, online: bool = False,
              **override) -> None:
        """Set the transform for 1-D vectors, from X (one vector or a batch; also the twin's
        exposure) or from n_features. packed: X is bit-packed (n_features = 8 x its last axis
        unless given). online (one vector at a time) needs nothing more here."""
        self._fit(X, n_features, packed, False, override)

    def fit2d(self, X=None, n_features: tuple[int, int] | None = None, packed: bool = False,
              online: bool = False, **override) -> None:
        """As fit1d for 2-D vectors: n_features is (height, width), read from X's last two axes
        unless X is bit-packed."""
        self._fit(X, n_features, packed, True, override)

    def _fit(self, X, n_features, packed: bool, two_d: bool, override: dict) -> None:
        if override:
            raise TypeError(f"unsupported transform settings {sorted(override)}")
        if X is None:
            if not n_features:
                raise ValueError("either input vector or n_features must be specified")
            shape = tuple(int(n) for n in np.atleast_1d(n_features))
            self._check_features(shape, two_d)
            self._traits = (shape, packed)
            self.device.fit1d(n_features=math.prod(shape))
            return
        X = to_numpy(X)
        if packed and two_d and n_features is None:
            raise ValueError("When packed and 2D features, number of features must be provided.")
        if packed:
            shape = (tuple(int(n) for n in np.atleast_1d(n_features)) if n_features is not None
                     else (8 * X.shape[-1],))
        else:
            shape = tuple(X.shape[-2:]) if two_d else (X.shape[-1],)
        self._check_features(shape, two_d)
        self._traits = (shape, packed)
        self.device.fit1d(X=self._rows(X))

    def _check_features(self, shape: tuple[int, ...], two_d: bool) -> None:
        if len(shape) != (2 if two_d else 1):
            raise ValueError(f"n_features {shape} is not {'2-D (height, width)' if two_d else '1-D'}")
        if not 1 <= math.prod(shape) <= self.max_n_features:
            raise ValueError(f"{math.prod(shape)} features (n_features {shape}) must be in "
                             f"1..{self.max_n_features} (max_n_features)")

    # -- transforms ----------------------------------------------------------------------------
    def transform(self, X, encoder_cls=NoEncoding, decoder_cls=NoDecoding):
        """|R x|^2 of each vector of X, encoded first and decoded after (classes or instances;
        a decoder class is built with the encoder's get_params())."""
        return self._transform(X, encoder_cls, decoder_cls, linear=False)

    def linear_transform(self, X, encoder_cls=NoEncoding, decoder_cls=NoDecoding):
        """x R (the real part of the linear image, before the camera), rescaled as `rescale`
        says; on the twin, or a real OPU through lightonml."""
        return self._transform(X, encoder_cls, decoder_cls, linear=True)

    def fit_transform1d(self, X, packed: bool = False, **override):
        self.fit1d(X, None, packed, False, **override)
        return self.transform(X)

    def fit_transform2d(self, X, packed: bool = False, n_2d_features=None, **override):
        self.fit2d(X, n_2d_features, packed, False, **override)
        return self.transform(X)

    def transform1d(self, *args, **kwargs):
        raise RuntimeError("transform1d is deprecated, you must now use fit1d and transform")

    def transform2d(self, *args, **kwargs):
        raise RuntimeError("transform2d is deprecated, you must now use fit2d and transform")

    def _transform(self, X, encoder_cls, decoder_cls, linear: bool):
        # AssertionError, as lightonml (its documentation catches these)
        if self._traits is None:
            raise AssertionError("Call fit1d or fit2d before transform")
        if not self.device.connected:
            raise AssertionError('OPU device isn\'t active, use opu.open() or "with opu:"')
        encoder = instance(encoder_cls)
        tensor = is_tensor(X)
        X_enc = to_numpy(encoder.transform(X))
        batch = self._batch_shape(X_enc)
        start = dt.datetime.now()
        rows = self._rows(X_enc)
        Y = (self.device.linear_transform(rows) if linear else self.device.transform(rows)).astype(np.float32)
        Y = ContextArray(Y.reshape(*batch, self.n_components), self._context(start, rows))
        if isinstance(decoder_cls, type) and hasattr(encoder, "get_params"):
            decoder = decoder_cls(**encoder.get_params())
        else:
            decoder = instance(decoder_cls)
        out = decoder.transform(Y)
        if linear and self.rescale is not OutputRescaling.none:
            n = math.prod(self._traits[0]) if self.rescale is OutputRescaling.variance else self.n_components
            out = out / np.float32(math.sqrt(n))
        if tensor:
            import torch
            return torch.from_numpy(np.ascontiguousarray(out))
        return out

    def _batch_shape(self, X: np.ndarray) -> tuple[int, ...]:
        """The sample axes of X: () for one vector, (n,) for a batch, (n, m) for a 2-D batch."""
        shape, packed = self._traits
        n_axes = 1 if packed else len(shape)
        if X.ndim < n_axes or X.ndim > n_axes + 2:
            raise ValueError(f"The input array has {X.ndim} dimensions; with "
                             f"{'packed ' if packed else ''}features {shape} it should have "
                             f"{n_axes} to {n_axes + 2}")
        return tuple(X.shape[: X.ndim - n_axes])

    def _rows(self, X: np.ndarray) -> np.ndarray:
        """X as (n, n_features) uint8 rows for the front end: unpacked, binary-checked."""
        shape, packed = self._traits
        n_feat = math.prod(shape)
        if packed:
            if X.dtype != np.uint8:
                raise ValueError("Bit-packed array type must be uint8")
            X = np.unpackbits(X, axis=-1)[..., :n_feat]
        elif X.shape[X.ndim - len(shape):] != shape:
            raise ValueError(f"input of shape {X.shape}: the OPU was fitted for features {shape}")
        rows = X.reshape(-1, n_feat)
        if rows.size and not np.isin(rows, (0, 1)).all():
            raise ValueError("The input array should be binary - contain only 0s and 1s.")
        return rows.astype(np.uint8)

    def _context(self, start: dt.datetime, rows: np.ndarray) -> Context:
        snap = self.device.snapshot().get("device", {})
        return Context(frametime=snap.get("frametime_us", snap.get("settings", {}).get("frametime_us")),
                       exposure=snap.get("exposure_us"), output_roi=((0, 0), (1, self.n_components)),
                       start=start, end=dt.datetime.now(),
                       n_ones=float(rows.sum(axis=1).mean()) if len(rows) else 0.0)

    # -- about ---------------------------------------------------------------------------------
    def version(self, devices: bool = False) -> str:
        """Name and versions: the OPU, labpnn's lightonml API, the device's identity."""
        from labpnn.lightonml import __version__
        lines = [] if self.simulated else [f"OPU {self.device.name!r} at {self.device.resource}"]
        lines.append(f"lightonml version {__version__}")
        if devices:
            with suppress(Exception):
                lines.append(self.device.identity())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"OPU(n_components={self.n_components}, max_n_features={self.max_n_features}, "
                f"device={type(self.device).__name__})")
