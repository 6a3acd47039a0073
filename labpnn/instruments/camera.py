"""Camera code the driver and the twin share: settings as last set, and the self-test on a frame."""

from __future__ import annotations

import numpy as np

from labpnn.errors import DeviceError
from labpnn.protocols import Health


def frame_health(camera) -> Health:
    """A camera's self-test: it delivers a frame, and the frame is not mostly saturated."""
    try:
        frame = camera.grab()
    except DeviceError as exc:
        return Health(False, 1, str(exc))
    saturated = float(np.mean(frame == 2**camera.bit_depth - 1))
    if saturated > 0.5:
        return Health(False, 2, f"{saturated:.0%} of the pixels saturate")
    return Health(True, 0, f"frame {frame.shape}, mean {frame.mean():.1f} DN")


class CameraSettings:
    """bit_depth from the options, exposure and gain as last set (drivers and twins alike)."""

    @property
    def bit_depth(self) -> int:
        return self.options.bit_depth

    @property
    def exposure_us(self) -> float:
        return self._exposure_us

    @property
    def gain_db(self) -> float:
        return self._gain_db
