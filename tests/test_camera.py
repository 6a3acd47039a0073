"""The GenICam camera driver, against a stand-in for harvesters (and a real camera with --camera)."""

import json
import sys
import types

import numpy as np
import pytest
from conftest import hardware_option

from labpnn.drivers.camera import GenICamCamera, frame_from_buffer
from labpnn.errors import DeviceError, TransportError
from labpnn.protocols import Device
from labpnn.units.scattering import Camera


class Node:
    def __init__(self, value=None, allowed=None):
        self._value, self.allowed, self.executed = value, allowed, 0

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        if self.allowed is not None and value not in self.allowed:
            raise ValueError(f"{value!r} not in {self.allowed}")
        self._value = value

    def execute(self):
        self.executed += 1


class FakeSensor:
    """The node map and frame source of a 640x480 camera."""

    def __init__(self):
        self.nodes = types.SimpleNamespace(
            Width=Node(640), Height=Node(480), OffsetX=Node(0), OffsetY=Node(0),
            PixelFormat=Node("Mono8", ["Mono8", "Mono12", "Mono16"]), ExposureTime=Node(5000.0),
            Gain=Node(3.0), ExposureAuto=Node("Continuous"), AcquisitionMode=Node("SingleFrame"),
            TriggerSelector=Node("FrameStart"), TriggerMode=Node("Off"), TriggerSource=Node("Line0"),
            TriggerSoftware=Node(), DeviceVendorName=Node("Acme"), DeviceModelName=Node("Cam-1"),
            DeviceSerialNumber=Node("42"), DeviceFirmwareVersion=Node("1.0"))
        self.acquiring = False
        self.delivered = 0
        self.silent = False

    def frame(self):
        """What the sensor reads out now, as harvesters would hand it over."""
        n = self.nodes
        dtype = np.uint8 if n.PixelFormat.value == "Mono8" else np.uint16
        data = (np.arange(n.Width.value * n.Height.value) % 200).astype(dtype)
        return types.SimpleNamespace(data=data, width=n.Width.value, height=n.Height.value,
                                     data_format=n.PixelFormat.value)


class FakeBuffer:
    def __init__(self, component):
        self.payload = types.SimpleNamespace(components=[component])
        self.queued = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.queue()

    def queue(self):
        self.queued = True


class FakeAcquirer:
    def __init__(self, sensor):
        self.sensor = sensor
        self.remote_device = types.SimpleNamespace(node_map=sensor.nodes)
        self.destroyed = False

    def start(self):
        self.sensor.acquiring = True

    def stop(self):
        self.sensor.acquiring = False

    def destroy(self):
        self.destroyed = True

    def try_fetch(self, timeout):
        s, n = self.sensor, self.sensor.nodes
        triggered = n.TriggerMode.value == "On"
        ready = s.acquiring and not s.silent and (not triggered or n.TriggerSoftware.executed > s.delivered)
        if not ready:
            return None
        s.delivered += 1
        return FakeBuffer(s.frame())


@pytest.fixture
def sensor(monkeypatch):
    """Install a fake `harvesters` package whose one camera is this sensor."""
    sensor = FakeSensor()

    class Harvester:
        def __init__(self):
            self.files, self.device_info_list = [], []

        def add_file(self, path):
            self.files.append(path)

        def update(self):
            self.device_info_list = [types.SimpleNamespace(serial_number="42")]

        def create(self, info):
            assert info is self.device_info_list[0]
            return FakeAcquirer(sensor)

        def reset(self):
            pass

    core = types.ModuleType("harvesters.core")
    core.Harvester = Harvester
    package = types.ModuleType("harvesters")
    package.core = core
    monkeypatch.setitem(sys.modules, "harvesters", package)
    monkeypatch.setitem(sys.modules, "harvesters.core", core)
    return sensor


def test_missing_harvesters_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "harvesters", None)
    with pytest.raises(DeviceError, match=r"pip install labpnn\[camera\]"):
        GenICamCamera(resource="producer.cti").connect()


@pytest.mark.parametrize("resource, options, match", [
    (None, {}, r"\.cti path"), ("camera0", {}, r"\.cti path"),
    ("p.cti", {"bit_depth": 10}, "bit_depth"), ("p.cti", {"exposure_us": 0}, "exposure_us"),
    ("p.cti", {"trigger": "hardware"}, "trigger"), ("p.cti", {"roi": (0, 0, 10)}, "roi"),
])
def test_bad_options_are_refused(resource, options, match):
    with pytest.raises(ValueError, match=match):
        GenICamCamera(resource=resource, **options)


def test_connect_configures_the_camera_for_software_triggered_frames(sensor):
    camera = GenICamCamera(resource="p.cti", bit_depth=12, exposure_us=250, gain_db=6,
                           roi=(16, 8, 320, 200))
    with camera:
        n = sensor.nodes
        assert (n.PixelFormat.value, n.Width.value, n.Height.value, n.OffsetX.value, n.OffsetY.value) == \
            ("Mono12", 320, 200, 16, 8)
        assert (n.ExposureTime.value, n.Gain.value, n.ExposureAuto.value) == (250, 6, "Off")
        assert (n.TriggerMode.value, n.TriggerSource.value, n.AcquisitionMode.value) == ("On", "Software", "Continuous")
        frame = camera.grab()
        assert frame.shape == (200, 320) == camera.shape and frame.dtype == np.uint16
        assert n.TriggerSoftware.executed == 1
        np.testing.assert_array_equal(frame.ravel(), np.arange(320 * 200) % 200)
        assert camera.identity() == "Acme Cam-1 (SN 42, FW 1.0)"
        assert isinstance(camera, Camera) and isinstance(camera, Device)
    assert not camera.connected and not sensor.acquiring


def test_setters_reach_the_nodes(sensor):
    with GenICamCamera(resource="p.cti") as camera:
        camera.set_exposure_us(123.0)
        camera.set_gain_db(2.5)
        assert (sensor.nodes.ExposureTime.value, sensor.nodes.Gain.value) == (123.0, 2.5)
        assert (camera.exposure_us, camera.gain_db) == (123.0, 2.5)
        with pytest.raises(ValueError, match="exposure must be > 0"):
            camera.set_exposure_us(-1)
        camera.reset()
        assert sensor.nodes.ExposureTime.value == 1000.0


def test_free_running_grab_needs_no_trigger(sensor):
    with GenICamCamera(resource="p.cti", trigger="free") as camera:
        assert camera.grab().shape == (480, 640) and sensor.nodes.TriggerSoftware.executed == 0


def test_a_silent_camera_times_out_as_a_transport_error(sensor):
    with GenICamCamera(resource="p.cti", timeout_s=0.05) as camera:
        sensor.silent = True
        with pytest.raises(TransportError, match="no frame within 0.05 s"):
            camera.grab()
        assert not camera.self_test().ok


def test_safe_state_stops_acquisition_and_grab_restarts_it(sensor):
    with GenICamCamera(resource="p.cti") as camera:
        camera.safe_state()
        assert not sensor.acquiring
        assert camera.grab().shape == (480, 640) and sensor.acquiring
        snap = json.loads(json.dumps(camera.snapshot()))
        assert snap["simulated"] is False and snap["settings"]["shape"] == [480, 640]


def test_a_refused_setting_is_named(sensor):
    sensor.nodes.PixelFormat.allowed = ["Mono8"]
    camera = GenICamCamera(resource="p.cti", bit_depth=16)
    with pytest.raises(DeviceError, match="refused PixelFormat = 'Mono16'"):
        camera.connect()
    assert not camera.connected


def test_an_unknown_serial_lists_the_cameras_found(sensor):
    with pytest.raises(DeviceError, match="no camera with serial 7; found 42"):
        GenICamCamera(resource="p.cti", serial="7").connect()


def component(data, width, height, fmt):
    return types.SimpleNamespace(data=np.asarray(data), width=width, height=height, data_format=fmt)


def test_frame_conversion_copies_the_buffer():
    data = np.arange(12, dtype=np.uint16)
    frame = frame_from_buffer(component(data, 4, 3, "Mono12"), (3, 4), 12, "cam")
    data[:] = 0  # the buffer is reused by the producer
    assert frame.shape == (3, 4) and frame.dtype == np.uint16 and frame[2, 3] == 11


@pytest.mark.parametrize("comp, bits, match", [
    (component(np.zeros(12, np.uint8), 4, 3, "Mono8"), 12, "PixelFormat Mono8, expected Mono12"),
    (component(np.zeros(10, np.uint8), 4, 3, "Mono8"), 8, r"frame of 4x3 px \(10 values\), expected 4x3"),
    (component(np.zeros(12, np.uint8), 6, 2, "Mono8"), 8, "frame of 6x2 px"),
    (component(np.zeros(12, np.uint16), 4, 3, "Mono8"), 8, "holds uint16 values, expected uint8"),
    (component(np.full(12, 5000, np.uint16), 4, 3, "Mono12"), 12, "above 4095"),
])
def test_frame_conversion_refuses_wrong_frames(comp, bits, match):
    with pytest.raises(DeviceError, match=match):
        frame_from_buffer(comp, (3, 4), bits, "cam")


def test_real_camera_grabs_frames(request):
    producer = hardware_option(request, "--camera")
    with GenICamCamera(resource=producer) as camera:
        frame = camera.grab()
        assert frame.shape == camera.shape and frame.dtype == np.uint8
        assert camera.self_test().ok
