"""GenICam camera through harvesters (optional: pip install labpnn[camera]): `GenICamCamera`.

The resource is the GenTL producer (.cti) of the camera's vendor; the `serial` option picks
the camera when the producer sees several. Node names follow the GenICam SFNC: PixelFormat
Mono8/Mono12/Mono16, ExposureTime (us), Gain (dB), Width/Height/OffsetX/OffsetY, and
TriggerMode/TriggerSource/TriggerSoftware for the software trigger. With the software
trigger (default) each grab() exposes one new frame, after the SLM has settled; free-running,
grab() drops the frames already queued and returns the next one.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from labpnn.errors import DeviceError, TransportError
from labpnn.instruments.base import Instrument
from labpnn.instruments.camera import CameraSettings, frame_health
from labpnn.protocols import Health

PIXEL_FORMATS = {8: "Mono8", 12: "Mono12", 16: "Mono16"}
HARVESTERS_MISSING = "harvesters is not installed: pip install labpnn[camera]"
_MAX_STALE_BUFFERS = 64  # more than a producer's buffer queue holds


def frame_from_buffer(component: Any, shape: tuple[int, int], bit_depth: int, where: str) -> np.ndarray:
    """Copy a harvesters buffer component (data, width, height, data_format) into a
    (height, width) uint8/uint16 frame, refusing the wrong format, size or bit depth."""
    expected = PIXEL_FORMATS[bit_depth]
    if str(component.data_format) != expected:
        raise DeviceError(f"frame in PixelFormat {component.data_format}, expected {expected}", where)
    h, w = shape
    data = np.asarray(component.data)
    if (int(component.height), int(component.width)) != (h, w) or data.size != h * w:
        raise DeviceError(f"frame of {component.width}x{component.height} px ({data.size} values), "
                          f"expected {w}x{h}", where)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    if data.dtype != dtype:
        raise DeviceError(f"{expected} frame holds {data.dtype} values, expected {np.dtype(dtype)}", where)
    frame = data.reshape(h, w).copy()  # the buffer goes back to the producer's queue
    if bit_depth == 12 and frame.max(initial=0) > 4095:
        raise DeviceError(f"Mono12 frame holds values up to {frame.max()}, above 4095", where)
    return frame


class GenICamCamera(CameraSettings, Instrument):
    """A GenICam (GigE Vision / USB3 Vision) camera."""

    simulated = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        serial: str | None = Field(None, description="serial number; None: the first camera")
        exposure_us: float = Field(1000.0, gt=0)
        gain_db: float = Field(0.0, ge=0)
        bit_depth: Literal[8, 12, 16] = 8
        roi: tuple[int, int, int, int] | None = Field(
            None, description="(offset_x, offset_y, width, height); None: the full sensor")
        trigger: Literal["software", "free"] = "software"
        timeout_s: float = Field(2.0, gt=0, description="longest wait for a frame")

    def __init__(self, name: str = "camera", resource: str | None = None, **options: Any):
        super().__init__(name, resource, **options)
        self._exposure_us = self.options.exposure_us
        self._gain_db = self.options.gain_db
        self._shape: tuple[int, int] | None = None
        self._harvester: Any = None
        self._acquirer: Any = None
        self._acquiring = False

    @classmethod
    def check_resource(cls, resource: str | None) -> None:
        if not isinstance(resource, str) or not resource.lower().endswith(".cti"):
            raise ValueError(f"GenICamCamera resource must be the GenTL producer's .cti path, "
                             f"got {resource!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the frames: the ROI's, or the sensor's once connected ((0, 0)
        before connect() when no ROI is set)."""
        if self._shape is not None:
            return self._shape
        return (self.options.roi[3], self.options.roi[2]) if self.options.roi else (0, 0)

    @property
    def connected(self) -> bool:
        return self._acquirer is not None

    # -- lifecycle ---------------------------------------------------------------------------
    def connect(self) -> None:
        with self._lock:
            if self.connected:
                return
            try:
                from harvesters.core import Harvester
            except ImportError:
                raise DeviceError(HARVESTERS_MISSING, self.name) from None
            try:
                self._harvester = Harvester()
                self._harvester.add_file(self.resource)
                self._harvester.update()
                self._acquirer = self._harvester.create(self._device_info())
                self._configure()
                self._start()
            except Exception as exc:
                self._release()
                if isinstance(exc, DeviceError):
                    raise
                raise DeviceError(f"cannot open the camera through {self.resource}: {exc}", self.name) from exc

    def _device_info(self) -> Any:
        infos = list(self._harvester.device_info_list)
        if not infos:
            raise DeviceError(f"no camera found through {self.resource}", self.name)
        if self.options.serial is None:
            return infos[0]
        for info in infos:  # pass the DeviceInfo itself: unambiguous when producers overlap
            if str(info.serial_number) == self.options.serial:
                return info
        raise DeviceError(f"no camera with serial {self.options.serial}; found "
                          + ", ".join(str(i.serial_number) for i in infos), self.name)

    def _configure(self) -> None:
        o = self.options
        self._set("TriggerMode", "Off", optional=True)
        self._set("PixelFormat", PIXEL_FORMATS[o.bit_depth])
        if o.roi is not None:
            x, y, w, h = o.roi
            self._set("OffsetX", 0)
            self._set("OffsetY", 0)
            self._set("Width", w)
            self._set("Height", h)
            self._set("OffsetX", x)
            self._set("OffsetY", y)
        nodes = self._acquirer.remote_device.node_map
        self._shape = (int(nodes.Height.value), int(nodes.Width.value))
        self._set("ExposureAuto", "Off", optional=True)
        self._set("ExposureTime", self._exposure_us)
        self._set("GainAuto", "Off", optional=True)
        self._set("Gain", self._gain_db)
        self._set("AcquisitionMode", "Continuous", optional=True)
        if o.trigger == "software":
            self._set("TriggerSelector", "FrameStart", optional=True)
            self._set("TriggerMode", "On")
            self._set("TriggerSource", "Software")

    def _set(self, node: str, value: Any, optional: bool = False) -> None:
        try:
            target = getattr(self._acquirer.remote_device.node_map, node)
        except Exception:  # noqa: BLE001 - GenICam raises its own types for a missing node
            if optional:
                return
            raise DeviceError(f"the camera has no {node} node", self.name) from None
        try:
            target.value = value
        except Exception as exc:  # noqa: BLE001
            raise DeviceError(f"the camera refused {node} = {value!r}: {exc}", self.name) from None

    def _start(self) -> None:
        self._acquirer.start()
        self._acquiring = True

    def _stop(self) -> None:
        if self._acquiring:
            self._acquiring = False
            self._acquirer.stop()

    def _release(self) -> None:
        acquirer, harvester = self._acquirer, self._harvester
        self._acquirer = self._harvester = None
        self._acquiring = False
        try:
            if acquirer is not None:
                acquirer.stop()
                acquirer.destroy()
        finally:
            if harvester is not None:
                harvester.reset()

    def close(self) -> None:
        with self._lock:
            self._release()


    # -- frames ------------------------------------------------------------------------------
    def grab(self) -> np.ndarray:
        """One new frame (height, width), uint8 (Mono8) or uint16 (Mono12/16)."""
        with self._lock:
            if not self.connected:
                raise DeviceError("not connected: call connect() first", self.name)
            try:
                if not self._acquiring:
                    self._start()
                for _ in range(_MAX_STALE_BUFFERS):  # frames exposed before this call
                    if (stale := self._acquirer.try_fetch(timeout=0.001)) is None:
                        break
                    stale.queue()
                if self.options.trigger == "software":
                    self._acquirer.remote_device.node_map.TriggerSoftware.execute()
                deadline = time.monotonic() + self.options.timeout_s
                while (remaining := deadline - time.monotonic()) > 0:
                    buffer = self._acquirer.try_fetch(timeout=remaining)
                    if buffer is not None:  # None: timed out, or an incomplete frame dropped
                        with buffer:
                            return frame_from_buffer(buffer.payload.components[0], self.shape,
                                                     self.bit_depth, self.name)
            except DeviceError:
                raise
            except Exception as exc:  # noqa: BLE001 - GenTL errors: the link is in trouble
                raise TransportError(f"camera link failed during grab: {exc}", self.name) from exc
            raise TransportError(f"no frame within {self.options.timeout_s} s", self.name)

    def set_exposure_us(self, us: float) -> None:
        if not us > 0:
            raise ValueError(f"camera {self.name!r}: exposure must be > 0 us, got {us}")
        with self._lock:
            if self.connected:
                self._set("ExposureTime", float(us))
            self._exposure_us = float(us)

    def set_gain_db(self, db: float) -> None:
        if not db >= 0:
            raise ValueError(f"camera {self.name!r}: gain must be >= 0 dB, got {db}")
        with self._lock:
            if self.connected:
                self._set("Gain", float(db))
            self._gain_db = float(db)

    # -- Device ------------------------------------------------------------------------------
    def identity(self) -> str:
        with self._lock:
            if not self.connected:
                raise DeviceError("not connected: call connect() first", self.name)
            nodes = self._acquirer.remote_device.node_map
            parts = []
            for node in ("DeviceVendorName", "DeviceModelName", "DeviceSerialNumber", "DeviceFirmwareVersion"):
                try:
                    parts.append(str(getattr(nodes, node).value))
                except Exception:  # noqa: BLE001 - optional nodes
                    parts.append("?")
            return "{} {} (SN {}, FW {})".format(*parts)

    def reset(self) -> None:
        """Stop, re-apply the configured settings, restart acquisition."""
        with self._lock:
            self._exposure_us, self._gain_db = self.options.exposure_us, self.options.gain_db
            if self.connected:
                self._stop()
                self._configure()
                self._start()

    def safe_state(self) -> None:
        """Stop acquisition; never raises."""
        with self._lock:
            try:
                if self.connected:
                    self._stop()
            except Exception:  # noqa: BLE001 - a lost camera is not acquiring
                pass

    def self_test(self) -> Health:
        with self._lock:
            return frame_health(self)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            settings = self.options.model_dump() | {"exposure_us": self._exposure_us,
                                                     "gain_db": self._gain_db, "shape": self._shape}
            return {"identity": self.identity() if self.connected else f"camera {self.name!r} (not connected)",
                    "simulated": False, "resource": self.resource, "settings": settings}
