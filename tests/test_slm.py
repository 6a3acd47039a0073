"""The screen SLM: phase LUT, frame checks, and the display process (offscreen Qt)."""

import json

import numpy as np
import pytest
from conftest import hardware_option

from labpnn.drivers.slm import ScreenSLM
from labpnn.instruments.slm import PhaseLUT, validate_frames
from labpnn.errors import DeviceError, TransportError
from labpnn.protocols import Device
from labpnn.units.scattering import SpatialLightModulator

H, W = 48, 64


@pytest.fixture(scope="module")
def slm():
    """One offscreen display process for the module: a small frame on the 'screen'."""
    with ScreenSLM(name="slm", width=W, height=H, settle_ms=0) as device:
        yield device


def random_frame(seed, dtype=np.uint8, top=256):
    return np.random.default_rng(seed).integers(0, top, (H, W), dtype=dtype)


# -- phase LUT ---------------------------------------------------------------------------------
def test_default_lut_is_linear_over_two_pi():
    lut = PhaseLUT(8)
    assert lut.phase_to_grey(np.array([0.0, np.pi, np.pi / 2])).tolist() == [0, 128, 64]
    assert lut.phase_to_grey(2 * np.pi).item() == 0 and lut.phase_to_grey(-np.pi / 2).item() == 192
    assert lut.phase_to_grey(2 * np.pi - 0.001).item() == 0  # nearest is level 0, one turn on
    assert lut.phase_to_grey(np.pi).dtype == np.uint8 and PhaseLUT(16).phase_to_grey(np.pi).item() == 32768


def test_calibrated_lut_from_a_file(tmp_path):
    phases = np.linspace(0, 1.8 * np.pi, 256) ** 1.1 / (1.8 * np.pi) ** 0.1  # non-linear response
    path = tmp_path / "lut.txt"
    np.savetxt(path, phases)
    lut = PhaseLUT(8, str(path))
    grey = lut.phase_to_grey(phases[[10, 100, 200]])
    assert grey.tolist() == [10, 100, 200]


@pytest.mark.parametrize("table, match", [([0.0, 1.0], "256 finite"), (list(range(256))[::-1], "non-decreasing"),
                                          ("/nonexistent/lut.txt", "cannot be read")])
def test_bad_lut_is_refused(table, match):
    with pytest.raises(ValueError, match=match):
        PhaseLUT(8, table)


# -- frame checks -----------------------------------------------------------------------------
@pytest.mark.parametrize("frame, bits, match", [
    (np.zeros((H, W + 1), np.uint8), 8, r"frame shape \(48, 65\), expected \(48, 64\)"),
    (np.zeros((H, W), np.float64), 8, "integer grey levels"),
    (np.full((H, W), 300, np.uint16), 8, "exceed the 8-bit range 0..255"),
    (np.zeros((2, 3, H, W), np.uint8), 8, "stack"),
])
def test_bad_frames_are_refused_before_reaching_the_screen(frame, bits, match):
    with pytest.raises(ValueError, match=match):
        validate_frames(frame, (H, W), bits, "slm")


def test_frames_come_back_in_the_slms_dtype():
    assert validate_frames(np.full((H, W), 65535, np.int64), (H, W), 16, "slm").dtype == np.uint16
    assert validate_frames(np.full((H, W), 255, np.int64), (H, W), 8, "slm").dtype == np.uint8


@pytest.mark.parametrize("kwargs, match", [({"resource": "screen:1"}, "resource must be empty"),
                                           ({"bit_depth": 10}, "bit_depth"), ({"settle_ms": -1}, "settle_ms"),
                                           ({"lut": [0.0]}, "256 finite")])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScreenSLM(**kwargs)


def test_show_before_connect_is_refused():
    with pytest.raises(DeviceError, match="not connected"):
        ScreenSLM(width=W, height=H).show(np.zeros((H, W), np.uint8))


# -- the display process ---------------------------------------------------------------------
def test_screen_slm_implements_the_slm_protocol(slm):
    assert isinstance(slm, SpatialLightModulator) and isinstance(slm, Device)
    assert slm.shape == (H, W) and slm.bit_depth == 8 and slm.settle_s == 0 and not slm.simulated


def test_the_frame_on_screen_is_the_frame_sent(slm):
    for seed in range(3):
        frame = random_frame(seed)
        slm.show(frame)  # verified by the display's CRC of the pixels read back
        np.testing.assert_array_equal(slm.displayed(), frame)


def test_bad_frames_never_reach_the_display(slm):
    slm.show(random_frame(7))
    with pytest.raises(ValueError, match="exceed"):
        slm.show(np.full((H, W), 256, np.int32))
    np.testing.assert_array_equal(slm.displayed(), random_frame(7))


def test_self_test_safe_state_and_snapshot(slm):
    slm.show(random_frame(1))
    health = slm.self_test()
    assert health.ok, health.detail
    np.testing.assert_array_equal(slm.displayed(), random_frame(1))  # the self-test restores the frame
    slm.safe_state()
    assert not slm.displayed().any()
    snap = json.loads(json.dumps(slm.snapshot()))
    assert snap["simulated"] is False and snap["screen"]["width"] >= W and snap["settings"]["width"] == W


def test_16_bit_frames_in_a_window_show_their_top_8_bits():
    with ScreenSLM(width=W, height=H, bit_depth=16, settle_ms=0, fullscreen=False) as slm16:
        frame = random_frame(2, np.uint16, 65536)
        slm16.show(frame)
        expected = ((frame.astype(np.uint32) + 128) // 257).astype(np.uint8)
        np.testing.assert_array_equal(slm16.displayed(), expected)
        process = slm16._proc
    assert not slm16.connected and process.poll() is not None  # closing ends the display process


def test_a_dead_display_process_is_a_lost_link_and_reconnect_restores_it():
    with ScreenSLM(width=W, height=H, settle_ms=0) as slm:
        slm._proc.kill()
        slm._proc.wait()
        with pytest.raises(TransportError, match="display process exited"):
            slm.show(random_frame(0))
        slm.connect()
        slm.show(random_frame(0))
        np.testing.assert_array_equal(slm.displayed(), random_frame(0))


def test_a_missing_screen_is_named():
    slm = ScreenSLM(screen=7, width=W, height=H)
    with pytest.raises(DeviceError, match="screen 7 does not exist"):
        slm.connect()
    assert not slm.connected


def test_real_slm_shows_frames_pixel_exact(request):
    screen = int(hardware_option(request, "--slm-screen"))
    with ScreenSLM(screen=screen) as real:
        health = real.self_test()
        assert health.ok, health.detail
