"""lightonml.context: what an OPU transform returns, a float32 array carrying its context."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np


class Context:
    """The conditions of one transform: exposure and frame time (us), output region,
    start and end times, mean number of ones shown."""

    def __init__(self, frametime: float | None = None, exposure: float | None = None,
                 output_roi=None, start: dt.datetime | None = None, end: dt.datetime | None = None,
                 gain: float | None = None, input_roi=None, n_ones: float | None = None):
        self.info: Any = None
        self.exposure_us, self.frametime_us = exposure, frametime
        self.output_roi_upper, self.output_roi_shape = output_roi or (None, None)
        self.input_roi_upper, self.input_roi_shape = input_roi or (None, None)
        self.start, self.end, self.gain, self.n_ones = start, end, gain, n_ones

    def add_info(self, info: Any) -> None:
        self.info = info

    def as_dict(self) -> dict[str, Any]:
        d = {"exposure_us": self.exposure_us, "frametime_us": self.frametime_us,
             "output_roi": (self.output_roi_upper, self.output_roi_shape), "start": self.start}
        for key, value in (("gain_dB", self.gain), ("info", self.info), ("end", self.end),
                           ("n_ones", self.n_ones)):
            if value is not None:
                d[key] = value
        if self.input_roi_shape is not None:
            d["input_roi"] = (self.input_roi_upper, self.input_roi_shape)
        return d

    def __str__(self) -> str:
        return str(self.as_dict())

    def __eq__(self, other) -> bool:
        return self.__dict__ == other.__dict__ if isinstance(other, Context) else NotImplemented


class ContextArray(np.ndarray):
    """An ndarray with a `context` attribute (kept by views and slices)."""

    def __new__(cls, input_array, context: Context | None):
        obj = np.asarray(input_array).view(cls)
        obj.context = context
        return obj

    def __array_finalize__(self, obj) -> None:
        if obj is not None:
            self.context = getattr(obj, "context", None)
