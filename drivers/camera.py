"""GenICam camera: `GenICamCamera`, through either open GenICam stack a lab has.

- harvesters (pip install labpnn[camera]) with the camera vendor's GenTL producer: the
  resource is the producer's .cti path;
- Aravis (Debian gir1.2-aravis-0.8, Python through PyGObject: pip install labpnn[aravis]): the
  resource is `aravis:<device id>` (`arv-tool-0.8` lists them) or `aravis:` for the first
  camera. `aravis:Fake_1` is Aravis's built-in fake camera.

The `serial` option picks the camera when the stack sees several. Node names follow the
GenICam SFNC: PixelFormat Mono8/Mono12/Mono16, ExposureTime (us), Gain (dB), Width/Height/
OffsetX/OffsetY, and TriggerMode/TriggerSource/TriggerSoftware for the software trigger; a
camera that predates the SFNC names (ExposureTimeAbs, GainRaw in the camera's own units) is
driven through those. With the software trigger (default) each grab() exposes one new frame,
after the SLM has settled; free-running, grab() drops the frames already queued and returns
the next one.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from labpnn.errors import DeviceError, TransportError
from labpnn.instruments.base import Instrument
from labpnn.instruments.camera import CameraSettings, frame_health
from labpnn.protocols import Health

PIXEL_FORMATS = {8: "Mono8", 12: "Mono12", 16: "Mono16"}
HARVESTERS_MISSING = "harvesters is not installed: pip install labpnn[camera]"
ARAVIS_MISSING = ("Aravis is not installed: apt-get install gir1.2-aravis-0.8 and pip install "
                  "labpnn[aravis] (PyGObject)")
ARAVIS_PREFIX = "aravis:"
_MAX_STALE_BUFFERS = 64  # more than a producer's buffer queue holds
_ARAVIS_BUFFERS = 8
# SFNC name, then the older names a camera may use instead
_NODE_NAMES = {"ExposureTime": ("ExposureTime", "ExposureTimeAbs"), "Gain": ("Gain", "GainRaw")}


def frame_from_buffer(component: Any, shape: tuple[int, int], bit_depth: int, where: str) -> np.ndarray:
    """Copy a buffer component (data, width, height, data_format) into a (height, width)
    uint8/uint16 frame, refusing the wrong format, size or bit depth."""
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


class _HarvestersLink:
    """A camera through harvesters and a GenTL producer: its node map and buffers."""

    def __init__(self, name: str, producer: str, serial: str | None):
        try:
            from harvesters.core import Harvester
        except ImportError:
            raise DeviceError(HARVESTERS_MISSING, name) from None
        self._acquirer: Any = None
        self._harvester = Harvester()
        try:
            self._harvester.add_file(producer)
            self._harvester.update()
            self._acquirer = self._harvester.create(self._device_info(name, producer, serial))
        except Exception:
            self.close()
            raise

    def _device_info(self, name: str, producer: str, serial: str | None) -> Any:
        infos = list(self._harvester.device_info_list)
        if not infos:
            raise DeviceError(f"no camera found through {producer}", name)
        if serial is None:
            return infos[0]
        for info in infos:  # pass the DeviceInfo itself: unambiguous when producers overlap
            if str(info.serial_number) == serial:
                return info
        raise DeviceError(f"no camera with serial {serial}; found "
                          + ", ".join(str(i.serial_number) for i in infos), name)

    def node(self, name: str) -> Any:
        """The feature called name (.value, .execute()); LookupError when the camera has none."""
        try:
            return getattr(self._acquirer.remote_device.node_map, name)
        except Exception:  # noqa: BLE001 - GenICam raises its own types for a missing node
            raise LookupError(name) from None

    def start(self) -> None:
        self._acquirer.start()

    def stop(self) -> None:
        self._acquirer.stop()

    def fetch(self, timeout_s: float, read: Callable[[Any], np.ndarray]) -> np.ndarray | None:
        """read(component) of the next complete frame within timeout_s (the buffer then goes
        back to the producer), or None."""
        buffer = self._acquirer.try_fetch(timeout=timeout_s)
        if buffer is None:
            return None
        with buffer:
            return read(buffer.payload.components[0])

    def drop_queued(self) -> None:
        for _ in range(_MAX_STALE_BUFFERS):  # frames exposed before this call
            if (stale := self._acquirer.try_fetch(timeout=0.001)) is None:
                break
            stale.queue()

    def close(self) -> None:
        acquirer, harvester = self._acquirer, self._harvester
        self._acquirer = self._harvester = None
        try:
            if acquirer is not None:
                acquirer.stop()
                acquirer.destroy()
        finally:
            if harvester is not None:
                harvester.reset()


class _AravisNode:
    """One feature of an Aravis device, with harvesters' node interface (.value, .execute())."""

    def __init__(self, feature: Any, integer: bool):
        self._feature, self._integer = feature, integer

    @property
    def value(self) -> str:
        return self._feature.get_value_as_string()

    @value.setter
    def value(self, value: Any) -> None:
        if self._integer and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{value} for an integer feature")
            value = int(value)
        self._feature.set_value_from_string(str(value))

    def execute(self) -> None:
        self._feature.execute()


class _AravisLink:
    """A camera through Aravis (GObject introspection): its feature tree and stream."""

    def __init__(self, name: str, device_id: str, serial: str | None):
        try:
            import gi
            gi.require_version("Aravis", "0.8")
            from gi.repository import Aravis
        except (ImportError, ValueError):
            raise DeviceError(ARAVIS_MISSING, name) from None
        self._aravis = Aravis
        self._stream: Any = None
        if device_id.startswith("Fake"):
            Aravis.enable_interface("Fake")  # off by default
        Aravis.update_device_list()
        ids = [Aravis.get_device_id(i) for i in range(Aravis.get_n_devices())]
        if not device_id:
            found = [i for i in range(Aravis.get_n_devices())
                     if serial is None or Aravis.get_device_serial_nbr(i) == serial]
            if not found:
                raise DeviceError(f"no camera{'' if serial is None else f' with serial {serial}'} "
                                  f"found through Aravis; found {ids or 'none'}", name)
            device_id = ids[found[0]]
        self._camera = Aravis.Camera.new(device_id)  # GLib.Error when there is no such camera
        self._device = self._camera.get_device()
        self._formats = {getattr(Aravis, f"PIXEL_FORMAT_MONO_{b}"): f for b, f in PIXEL_FORMATS.items()}

    def node(self, name: str) -> _AravisNode:
        feature = self._device.get_feature(name)
        if feature is None:
            raise LookupError(name)
        return _AravisNode(feature, isinstance(feature, self._aravis.GcInteger))

    def start(self) -> None:
        if self._stream is None:
            self._stream = self._camera.create_stream(None, None)
            size = self._camera.get_payload()
            for _ in range(_ARAVIS_BUFFERS):
                self._stream.push_buffer(self._aravis.Buffer.new_allocate(size))
        self._camera.start_acquisition()

    def stop(self) -> None:
        self._camera.stop_acquisition()
        self._stream = None  # buffers are sized for the payload: new ones at the next start

    def fetch(self, timeout_s: float, read: Callable[[Any], np.ndarray]) -> np.ndarray | None:
        buffer = self._stream.timeout_pop_buffer(max(1, int(timeout_s * 1e6)))
        if buffer is None:
            return None
        try:
            if buffer.get_status() != self._aravis.BufferStatus.SUCCESS:
                return None  # an incomplete frame: dropped, as harvesters does
            code = buffer.get_image_pixel_format()
            fmt = self._formats.get(code, f"pixel format 0x{code:08x}")
            dtype = np.uint8 if fmt == "Mono8" else np.uint16
            return read(types.SimpleNamespace(
                data=np.frombuffer(buffer.get_data(), dtype), width=buffer.get_image_width(),
                height=buffer.get_image_height(), data_format=fmt))
        finally:
            self._stream.push_buffer(buffer)

    def drop_queued(self) -> None:
        for _ in range(_MAX_STALE_BUFFERS):
            if (stale := self._stream.try_pop_buffer()) is None:
                break
            self._stream.push_buffer(stale)

    def close(self) -> None:
        try:
            if self._stream is not None:
                self._camera.stop_acquisition()
        finally:
            self._stream = self._camera = self._device = None


class GenICamCamera(CameraSettings, Instrument):
    """A GenICam (GigE Vision / USB3 Vision) camera, through harvesters or Aravis."""

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
        self._link: _HarvestersLink | _AravisLink | None = None
        self._acquiring = False

    @classmethod
    def check_resource(cls, resource: str | None) -> None:
        if not isinstance(resource, str) or not (resource.lower().endswith(".cti")
                                                 or resource.startswith(ARAVIS_PREFIX)):
            raise ValueError(f"GenICamCamera resource must be the GenTL producer's .cti path or "
                             f"'{ARAVIS_PREFIX}<device id>', got {resource!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the frames: the ROI's, or the sensor's once connected ((0, 0)
        before connect() when no ROI is set)."""
        if self._shape is not None:
            return self._shape
        return (self.options.roi[3], self.options.roi[2]) if self.options.roi else (0, 0)

    @property
    def connected(self) -> bool:
        return self._link is not None

    # -- lifecycle ---------------------------------------------------------------------------
    def connect(self) -> None:
        with self._lock:
            if self.connected:
                return
            try:
                if self.resource.startswith(ARAVIS_PREFIX):
                    self._link = _AravisLink(self.name, self.resource[len(ARAVIS_PREFIX):],
                                             self.options.serial)
                else:
                    self._link = _HarvestersLink(self.name, self.resource, self.options.serial)
                self._configure()
                self._start()
            except Exception as exc:
                self._release()
                if isinstance(exc, DeviceError):
                    raise
                raise DeviceError(f"cannot open the camera through {self.resource}: {exc}", self.name) from exc

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
        self._shape = (int(self._node("Height").value), int(self._node("Width").value))
        self._set("ExposureAuto", "Off", optional=True)
        self._set("ExposureTime", self._exposure_us)
        self._set("GainAuto", "Off", optional=True)
        self._set("Gain", self._gain_db)
        self._set("AcquisitionMode", "Continuous", optional=True)
        if o.trigger == "software":
            self._set("TriggerSelector", "FrameStart", optional=True)
            self._set("TriggerMode", "On")
            self._set("TriggerSource", "Software")

    def _node(self, node: str) -> Any:
        """The camera's node (its SFNC name, else an older name of it); DeviceError if none."""
        for name in _NODE_NAMES.get(node, (node,)):
            try:
                return self._link.node(name)
            except LookupError:
                continue
        raise DeviceError(f"the camera has no {node} node", self.name)

    def _set(self, node: str, value: Any, optional: bool = False) -> None:
        try:
            target = self._node(node)
        except DeviceError:
            if optional:
                return
            raise
        try:
            target.value = value
        except Exception as exc:  # noqa: BLE001
            raise DeviceError(f"the camera refused {node} = {value!r}: {exc}", self.name) from None

    def _start(self) -> None:
        self._link.start()
        self._acquiring = True

    def _stop(self) -> None:
        if self._acquiring:
            self._acquiring = False
            self._link.stop()

    def _release(self) -> None:
        link, self._link = self._link, None
        self._acquiring = False
        if link is not None:
            link.close()

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
                self._link.drop_queued()  # frames exposed before this call
                if self.options.trigger == "software":
                    self._node("TriggerSoftware").execute()
                deadline = time.monotonic() + self.options.timeout_s
                while (remaining := deadline - time.monotonic()) > 0:
                    frame = self._link.fetch(remaining, lambda c: frame_from_buffer(
                        c, self.shape, self.bit_depth, self.name))
                    if frame is not None:  # None: timed out, or an incomplete frame dropped
                        return frame
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
            parts = []
            for node in ("DeviceVendorName", "DeviceModelName", "DeviceSerialNumber", "DeviceFirmwareVersion"):
                try:
                    parts.append(str(self._link.node(node).value))
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
