"""The GenICam camera driver against a real GenICam stack: Aravis and its built-in fake camera
(Debian gir1.2-aravis-0.8 + PyGObject; skipped when they are not installed)."""

from __future__ import annotations

import pytest

from labpnn.drivers.camera import GenICamCamera
from labpnn.errors import DeviceError


def _aravis():
    try:
        import gi
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ImportError, ValueError) as exc:
        pytest.skip(f"Aravis not installable here ({exc}): apt-get install gir1.2-aravis-0.8, "
                    "pip install -e '.[aravis]'")
    return Aravis


@pytest.fixture
def fake_camera():
    Aravis = _aravis()
    Aravis.enable_interface("Fake")
    yield Aravis
    Aravis.shutdown()


def test_settings_and_frames_through_the_feature_tree(fake_camera):
    camera = GenICamCamera("camera", "aravis:Fake_1", exposure_us=10000, gain_db=0,
                           roi=(16, 8, 128, 96))
    camera.connect()
    try:
        assert camera.identity().startswith("Aravis Fake")
        assert camera.shape == (96, 128)
        # what the camera itself reports, read back through Aravis's own API
        device = camera._link._camera
        assert device.get_region()[2:] == (128, 96) and device.get_region()[:2] == (16, 8)
        assert device.get_pixel_format_as_string() == "Mono8"
        assert device.get_exposure_time() == pytest.approx(10000)
        assert device.get_trigger_source() == "Software"
        frame = camera.grab()
        assert frame.shape == (96, 128) and frame.dtype.name == "uint8"
        bright = float(frame.mean())
        camera.set_exposure_us(2000)
        assert device.get_exposure_time() == pytest.approx(2000)
        assert float(camera.grab().mean()) < bright     # the fake sensor follows its exposure
        camera.set_exposure_us(10000)
        camera.set_gain_db(4)
        assert device.get_gain() == pytest.approx(4)
        assert float(camera.grab().mean()) > bright     # and its gain
        snap = camera.snapshot()
        assert snap["settings"]["gain_db"] == 4 and snap["settings"]["shape"] == (96, 128)
    finally:
        camera.close()
    assert not camera.connected


def test_free_running_16_bit_frames_and_self_test(fake_camera):
    camera = GenICamCamera("camera", "aravis:Fake_1", trigger="free", bit_depth=16,
                           exposure_us=10000, roi=(0, 0, 64, 64))
    camera.connect()
    try:
        assert camera._link._camera.get_pixel_format_as_string() == "Mono16"
        frame = camera.grab()
        assert frame.shape == (64, 64) and frame.dtype.name == "uint16"
        assert camera.self_test().ok
    finally:
        camera.close()


def test_a_camera_that_is_not_there_is_a_clear_error(fake_camera):
    camera = GenICamCamera("camera", "aravis:Fake_7")
    with pytest.raises(DeviceError, match="cannot open the camera through aravis:Fake_7"):
        camera.connect()
    assert not camera.connected
    with pytest.raises(DeviceError, match="refused Gain = 2.5"):
        GenICamCamera("camera", "aravis:Fake_1", gain_db=2.5).connect()  # an integer feature
