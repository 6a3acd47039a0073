"""The optics twins: scattering medium, SLM twin, camera twin and their coupling."""

import itertools
import json

import numpy as np
import pytest

from labpnn.errors import DeviceError, TransportError
from labpnn.protocols import Device, FaultInjectable
from labpnn.sim_devices.optics import ScatteringMedium, SimCamera, SimSLM
from labpnn.units.scattering import Camera, SpatialLightModulator

_tables = itertools.count()


def bench(slm_options=None, camera_options=None):
    """A connected SimSLM + SimCamera pair on a table of their own."""
    table = f"test-{next(_tables)}"
    slm = SimSLM(**{"table": table, "width": 32, "height": 32, "mode_block": 2, **(slm_options or {})})
    camera = SimCamera(**{"table": table, "width": 40, "height": 40, **(camera_options or {})})
    slm.connect()
    camera.connect()
    return slm, camera


def random_frame(seed, shape=(32, 32)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# -- medium ------------------------------------------------------------------------------------
def test_fully_developed_speckle_is_exponentially_distributed():
    intensity = ScatteringMedium(n_in=500, n_out=20000, seed=1).intensity(np.ones((1, 500), np.complex64))[0]
    assert abs(intensity.mean() - 1) < 0.05  # unit-amplitude field on every mode: mean 1
    assert abs(intensity.std() / intensity.mean() - 1) < 0.05  # contrast 1
    assert abs(np.mean(intensity > intensity.mean()) - np.exp(-1)) < 0.02  # P(I > <I>) = 1/e


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_intensity_is_the_squared_modulus_of_T_times_the_field(dtype):
    medium = ScatteringMedium(30, 50, seed=2)
    rng = np.random.default_rng(0)
    fields = rng.random((7, 30)).astype(dtype)
    if dtype is np.complex64:
        fields = fields * np.exp(1j * rng.random((7, 30))).astype(np.complex64)
    expected = np.abs(fields.astype(np.complex128) @ medium.matrix.T.astype(np.complex128)) ** 2
    np.testing.assert_allclose(medium.intensity(fields), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(medium.intensity(fields[:, :10]), medium.intensity(
        np.pad(fields[:, :10], ((0, 0), (0, 20)))), rtol=1e-5)  # missing modes are dark


def test_medium_is_seeded():
    a, b, c = (ScatteringMedium(10, 20, seed=s).matrix for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_medium_refuses_too_wide_fields():
    with pytest.raises(ValueError, match=r"expected \(n, <= 10\)"):
        ScatteringMedium(10, 20).intensity(np.ones((1, 11)))


# -- SLM twin ----------------------------------------------------------------------------------
def test_twins_implement_their_protocols():
    slm, camera = bench()
    for device in (slm, camera):
        assert isinstance(device, Device) and isinstance(device, FaultInjectable) and device.simulated
    assert isinstance(slm, SpatialLightModulator) and isinstance(camera, Camera)
    assert json.loads(json.dumps(slm.snapshot()))["simulated"] is True
    assert json.loads(json.dumps(camera.snapshot()))["settings"]["width"] == 40


@pytest.mark.parametrize("frame, match", [
    (np.zeros((32, 31), np.uint8), r"shape \(32, 31\), expected \(32, 32\)"),
    (np.zeros((32, 32), np.float32), "integer grey levels"),
    (np.full((32, 32), 256, np.int32), "exceed the 8-bit range 0..255"),
    (np.full((32, 32), -1, np.int32), "exceed the 8-bit range"),
    (np.zeros((2, 32, 32), np.uint8), "one frame"),
])
def test_slm_refuses_bad_frames(frame, match):
    slm, _ = bench()
    with pytest.raises(ValueError, match=match):
        slm.show(frame)


def test_16_bit_slm_takes_16_bit_levels():
    slm, camera = bench({"bit_depth": 16})
    slm.show(np.full((32, 32), 65535, np.uint16))
    assert slm.frame.dtype == np.uint16 and camera.grab().shape == (40, 40)


def test_mode_block_must_tile_the_slm():
    with pytest.raises(ValueError, match="mode_block 3 must divide"):
        SimSLM(width=32, height=32, mode_block=3)


def test_show_needs_a_connection_and_a_link():
    slm = SimSLM(table="unconnected", width=8, height=8, mode_block=1)
    with pytest.raises(DeviceError, match="not connected"):
        slm.show(np.zeros((8, 8), np.uint8))
    slm.connect()
    slm.inject_fault("disconnect")
    with pytest.raises(TransportError, match="link lost"):
        slm.show(np.zeros((8, 8), np.uint8))
    slm.connect()  # reconnecting restores the link
    slm.show(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="unknown fault 'melt'"):
        slm.inject_fault("melt")


# -- coupling through the optical table ------------------------------------------------------
def test_the_camera_sees_its_own_tables_slm_only():
    slm_a, camera_a = bench()
    slm_b, camera_b = bench()
    slm_a.show(random_frame(1))
    before_a, before_b = camera_a.grab().astype(float), camera_b.grab().astype(float)
    slm_b.show(random_frame(2))  # changes table b only
    assert np.corrcoef(camera_a.grab().ravel(), before_a.ravel())[0, 1] > 0.9
    assert np.corrcoef(camera_b.grab().ravel(), before_b.ravel())[0, 1] < 0.5


def test_stuck_slm_no_longer_changes_the_speckle():
    slm, camera = bench()
    slm.show(random_frame(1))
    reference = camera.grab().astype(float)
    slm.inject_fault("stuck")
    slm.show(random_frame(2))
    assert np.corrcoef(camera.grab().ravel(), reference.ravel())[0, 1] > 0.9
    assert not slm.self_test().ok


def test_closing_the_slm_leaves_the_camera_in_the_dark():
    slm, camera = bench({}, {"read_noise_e": 0.0})
    slm.show(random_frame(1))
    assert camera.grab().mean() > 10
    slm.close()
    assert camera.grab().max() == 0


def test_sequence_mode_matches_frame_by_frame():
    slm, camera = bench({}, {"photons_per_us": 400.0, "full_well_e": 1e6, "bit_depth": 16})
    frames = np.stack([random_frame(s) for s in range(5)])
    slm.show_sequence(frames)
    sequence = camera.grab_sequence().astype(float)
    single = []
    for frame in frames:
        slm.show(frame)
        single.append(camera.grab())
    assert sequence.shape == (5, 40, 40)
    for a, b in zip(sequence, np.array(single, float)):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_amplitude_slm_is_dark_when_all_pixels_are_off():
    slm, camera = bench({"modulation": "amplitude"}, {"read_noise_e": 0.0, "dark_current_e_per_s": 0.0})
    slm.show(np.zeros((32, 32), np.uint8))
    assert camera.grab().max() == 0
    slm.show(np.full((32, 32), 255, np.uint8))
    assert camera.grab().mean() > 10


# -- camera twin: the EMVA 1288 model ---------------------------------------------------------
def test_camera_speckle_contrast_is_one_when_shot_noise_is_small():
    slm, camera = bench({}, {"bit_depth": 16, "photons_per_us": 2000.0, "full_well_e": 1e7,
                             "width": 120, "height": 120})
    slm.show(random_frame(3))
    frame = camera.grab().astype(float)
    assert abs(frame.std() / frame.mean() - 1) < 0.1


def test_photon_transfer_variance_is_mean_plus_read_noise_squared():
    # dark signal only: Poisson(1000 e-) + 6 e- read noise, 1 e- per DN
    camera = SimCamera(table=f"dark-{next(_tables)}", bit_depth=16, dark_current_e_per_s=1e7,
                       exposure_us=100.0, e_per_dn=1.0, full_well_e=60000.0, width=200, height=200)
    with camera:  # no SLM on its table
        frame = camera.grab().astype(float)
    assert abs(frame.mean() - 999.5) < 2  # floor() quantisation: -0.5 DN
    assert abs(frame.var() - (1000 + 36 + 1 / 12)) < 60


@pytest.mark.parametrize("bit_depth, dtype", [(8, np.uint8), (12, np.uint16), (16, np.uint16)])
def test_camera_saturates_at_the_top_dn(bit_depth, dtype):
    slm, camera = bench({}, {"bit_depth": bit_depth})
    slm.show(random_frame(1))
    normal = camera.grab()
    assert normal.dtype == dtype and np.mean(normal == 2**bit_depth - 1) < 0.05
    camera.set_exposure_us(camera.exposure_us * 1000)
    bright = camera.grab()
    assert bright.dtype == dtype and bright.max() == 2**bit_depth - 1 and np.mean(bright == bright.max()) > 0.9
    assert not camera.self_test().ok


def test_saturate_fault_and_reset():
    slm, camera = bench()
    slm.show(random_frame(1))
    camera.inject_fault("saturate")
    assert np.mean(camera.grab() == 255) > 0.9
    camera.reset()
    assert np.mean(camera.grab() == 255) < 0.05 and camera.self_test().ok


def test_camera_is_linear_in_exposure_and_gain():
    slm, camera = bench({}, {"bit_depth": 12, "width": 100, "height": 100})
    slm.show(random_frame(4))
    base = camera.grab().mean()
    camera.set_exposure_us(camera.exposure_us / 2)
    half = camera.grab().mean()
    camera.set_gain_db(20 * np.log10(2))
    gained = camera.grab().mean()
    assert abs(half / base - 0.5) < 0.02 and abs(gained / base - 1) < 0.02


def test_camera_refuses_bad_settings():
    _, camera = bench()
    with pytest.raises(ValueError, match="exposure must be > 0"):
        camera.set_exposure_us(0)
    with pytest.raises(ValueError, match="0..48 dB"):
        camera.set_gain_db(60)
    with pytest.raises(ValueError, match="bit_depth"):
        SimCamera(bit_depth=10)
    with pytest.raises(ValueError, match="resource must be empty"):
        SimCamera.check_resource("tcp://x:1")
