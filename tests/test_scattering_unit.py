"""The scattering unit and the SLM + camera projector, on the twins."""

import itertools
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from labpnn.sim_devices.opu import SimOPUDevice
from labpnn.protocols import Projector, Unit
from labpnn.sim_devices.optics import SimCamera, SimSLM
from labpnn.units.scattering import ScatteringUnit, SLMCameraProjector

_tables = itertools.count()


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16).astype(np.float32), data.target


@pytest.fixture
def opu():
    with SimOPUDevice(n_components=600, max_n_features=64) as device:
        yield device


def slm_camera(n_inputs=64, n_outputs=500, **kwargs):
    table = f"unit-{next(_tables)}"
    slm = SimSLM(table=table, width=64, height=64, mode_block=4)
    camera = SimCamera(table=table, width=32, height=32)
    return SLMCameraProjector(slm, camera, n_inputs, n_outputs, **kwargs)


def accuracy(features, labels):
    """Test accuracy of a logistic regression (one BLAS thread: small matrices on a busy
    machine are many times slower with two)."""
    with threadpool_limits(1):
        clf = LogisticRegression(max_iter=3000).fit(features[:1200], labels[:1200])
        return clf.score(features[1200:], labels[1200:])


# -- the unit ---------------------------------------------------------------------------------
def test_prepare_model_deploy_measure_shapes(opu, digits):
    X, _ = digits
    unit = ScatteringUnit("s1", opu, in_features=64, out_features=10)
    assert isinstance(unit, Unit) and unit.instruments() == [opu] and unit.expected(X) is None
    H = unit.prepare(X[:100])
    assert H.shape == (100, 600) and H.dtype == np.float32
    assert abs(H.mean()) < 1e-3 and abs(H.std() - 1) < 1e-3  # standardised on the first call
    z = unit.model()(torch.from_numpy(H))
    assert z.shape == (100, 10) and (z >= 0).all()  # relu
    deployed = unit.deploy()
    assert {k: v.shape for k, v in deployed.items()} == unit.deployed_shapes() == {"weight": (10, 600), "bias": (10,)}
    assert unit.matches(deployed) and unit.matches(unit.read_back())
    y = unit.measure(X[:100])
    assert y.shape == (100, 10) and y.dtype == np.float32
    expected = z.detach().numpy()
    assert np.corrcoef(y.ravel(), expected.ravel())[0, 1] > 0.95  # a fresh, noisy measurement
    assert unit.last_frame.ndim == 2


def test_normalisation_is_frozen_at_the_first_call(opu, digits):
    X, _ = digits
    unit = ScatteringUnit("s1", opu, 64, 10)
    unit.prepare(X[:200])
    frozen = (unit.feature_offset, unit.feature_scale)
    later = unit.prepare(X[:5] * 0.0 + 1.0)  # all inputs on: much brighter
    assert (unit.feature_offset, unit.feature_scale) == frozen and later.mean() > 1


def test_deployed_weights_stay_until_the_next_deploy(opu, digits):
    X, _ = digits
    unit = ScatteringUnit("s1", opu, 64, 10, activation="none")
    unit.prepare(X[:50])
    first = unit.deploy()
    with torch.no_grad():
        unit.model()[0].weight.add_(1.0)
    assert unit.matches(first)  # training alone changes nothing deployed
    np.testing.assert_allclose(unit.measure(X[:3]), unit.prepare(X[:3]) @ first["weight"].T + first["bias"],
                               atol=3.0)  # noise aside, the first weights
    second = unit.deploy()
    assert not unit.matches(first) and unit.matches(second)
    assert not unit.matches({"weight": second["weight"]})


def test_misuse_is_refused(opu):
    unit = ScatteringUnit("s1", opu, 64, 10)
    with pytest.raises(ValueError, match="deploy"):
        unit.measure(np.zeros((2, 64)))
    with pytest.raises(ValueError, match="deploy"):
        unit.read_back()
    with pytest.raises(ValueError, match=r"shape \(2, 63\), expected \(n, 64\)"):
        unit.prepare(np.zeros((2, 63)))
    with pytest.raises(ValueError, match="NaN"):
        unit.prepare(np.full((2, 64), np.nan))
    with pytest.raises(ValueError, match="takes 64 inputs, fewer than the unit's in_features 65"):
        ScatteringUnit("s2", opu, 65, 10)
    with pytest.raises(ValueError, match="bitplane"):
        ScatteringUnit("s2", opu, 64, 10, bits=4)
    with pytest.raises(ValueError, match="encoding"):
        ScatteringUnit("s2", opu, 64, 10, encoding="gray")
    with pytest.raises(ValueError, match="activation"):
        ScatteringUnit("s2", opu, 64, 10, activation="swish")
    with pytest.raises(TypeError, match="not a Projector"):
        ScatteringUnit("s2", object(), 64, 10)


def test_bitplane_encoding_takes_unscaled_non_negative_inputs(opu, digits):
    X, _ = digits
    unit = ScatteringUnit("s1", opu, 64, 10, encoding="bitplane", bits=3)
    H = unit.prepare(X[:40] * 37.0)  # e.g. a previous unit's relu outputs
    assert unit.input_scale == pytest.approx(37.0) and H.shape == (40, 600)
    assert unit.prepare(X[:5] * 100.0).shape == (5, 600)  # larger values clip, they do not fail


@pytest.mark.parametrize("encoding, bits", [("threshold", 1), ("bitplane", 4)])
def test_optical_features_of_digits_are_linearly_separable(opu, digits, encoding, bits):
    X, y = digits
    unit = ScatteringUnit("s1", opu, 64, 10, encoding=encoding, bits=bits)
    assert accuracy(unit.prepare(X), y) > 0.8  # chance: 0.1


def test_a_wider_slm_projector_gets_the_extra_inputs_off(digits):
    X, y = digits
    with slm_camera(n_inputs=100) as projector:
        unit = ScatteringUnit("s1", projector, 64, 10)
        x = (X[29:30] > 0.5).astype(np.uint8)
        assert unit.prepare(X[:30]).shape == (30, 500)  # the SLM shows the last input now
        assert np.array_equal(projector.slm.frame, projector.frames(np.pad(x, ((0, 0), (0, 36))))[0])


def test_units_sharing_an_opu_each_get_their_own_fit(digits):
    X, _ = digits
    with SimOPUDevice(n_components=300, max_n_features=200) as shared:
        first = ScatteringUnit("s1", shared, 64, 10)
        second = ScatteringUnit("s2", shared, 150, 10, encoding="bitplane", bits=2)
        a = first.prepare(X[:200])
        assert shared.n_features == 64
        exposure = shared.snapshot()["device"]["exposure_us"]
        second.prepare(np.random.default_rng(0).random((50, 150)))
        assert shared.n_features == 150
        again = first.prepare(X[:200])  # refitted: same input size and exposure as before
        assert shared.n_features == 64 and shared.snapshot()["device"]["exposure_us"] == exposure
        assert np.corrcoef(a.ravel(), again.ravel())[0, 1] > 0.95


def test_slm_camera_features_of_digits_are_linearly_separable(digits):
    X, y = digits
    with slm_camera() as projector:
        unit = ScatteringUnit("s1", projector, 64, 10)
        assert unit.instruments() == [projector.slm, projector.camera]
        assert accuracy(unit.prepare(X), y) > 0.8
        assert unit.last_frame.shape == (32, 32)


# -- the SLM + camera projector ---------------------------------------------------------------
def test_each_input_drives_its_own_macro_pixel():
    projector = slm_camera(n_inputs=10, macro_pixel=5)
    assert projector.grid == (3, 4) and projector.offset == ((64 - 15) // 2, (64 - 20) // 2)
    x = np.zeros((1, 10), np.uint8)
    x[0, 6] = 1  # row 1, column 2 of the grid
    frame = projector.frames(x)[0]
    zero, pi = projector.levels
    top, left = projector.offset[0] + 5, projector.offset[1] + 10
    assert (frame[top:top + 5, left:left + 5] == pi).all() and pi == 128
    assert np.sum(frame == pi) == 25 and np.sum(frame == zero) == 64 * 64 - 25


def test_projector_is_a_projector_over_both_instruments():
    projector = slm_camera()
    assert isinstance(projector, Projector) and projector.simulated and not projector.connected
    with projector:
        assert projector.slm.connected and projector.camera.connected
        y = projector.project((np.random.default_rng(0).random((3, 64)) < 0.5).astype(np.uint8))
        assert y.shape == (3, 500) and y.dtype == np.float32 and y.mean() > 5
        health = projector.self_test()
        assert health.ok, health.detail
        snap = json.loads(json.dumps(projector.snapshot()))
        assert snap["settings"]["macro_pixel"] == 8 and "SimSLM" in snap["slm"]["identity"]
        projector.slm.inject_fault("stuck")
        assert not projector.self_test().ok
    assert not projector.slm.connected and not projector.camera.connected


def test_frame_by_frame_without_sequence_mode_gives_the_same_speckle(monkeypatch):
    x = (np.random.default_rng(1).random((4, 64)) < 0.5).astype(np.uint8)
    with slm_camera() as projector:
        batched = projector.project(x)
        monkeypatch.delattr(SimSLM, "show_sequence")
        single = projector.project(x)
    assert np.corrcoef(batched.ravel(), single.ravel())[0, 1] > 0.95


def test_safe_state_reaches_the_camera_even_when_the_slm_fails(monkeypatch):
    projector = slm_camera()
    calls = []

    def broken():
        raise OSError("display gone")

    monkeypatch.setattr(projector.slm, "safe_state", broken)
    monkeypatch.setattr(projector.camera, "safe_state", lambda: calls.append("camera"))
    projector.safe_state()
    assert calls == ["camera"]


def test_camera_pixels_are_chosen_once_the_camera_knows_its_size():
    class LateCamera(SimCamera):  # like a GenICam camera without an ROI: size known on connect
        @property
        def shape(self):
            return super().shape if self.connected else (0, 0)

    table = f"unit-{next(_tables)}"
    slm = SimSLM(table=table, width=64, height=64, mode_block=4)
    x = np.ones((1, 64), np.uint8)
    too_many = SLMCameraProjector(slm, LateCamera(table=table, width=32, height=32), 64, 2000)
    with too_many, pytest.raises(ValueError, match=r"1..1024 \(camera pixels\)"):
        too_many.project(x)
    projector = SLMCameraProjector(slm, LateCamera(table=table, width=32, height=32), 64, 500)
    assert projector.pixels is None
    with projector:
        assert projector.project(x).shape == (1, 500) and len(projector.pixels) == 500


@pytest.mark.parametrize("kwargs, match", [
    ({"n_inputs": 64, "n_outputs": 2000}, r"1..1024 \(camera pixels\)"),
    ({"n_inputs": 64, "n_outputs": 10, "macro_pixel": 9}, "do not fit"),
    ({"n_inputs": 64, "n_outputs": 10, "encoding": "polar"}, "encoding"),
])
def test_bad_projector_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        slm_camera(**kwargs)


@pytest.mark.parametrize("x, match", [(np.zeros((2, 63), np.uint8), r"expected \(n, 64\)"),
                                      (np.full((2, 64), 0.5), "binary")])
def test_projector_refuses_bad_input(x, match):
    with slm_camera() as projector, pytest.raises(ValueError, match=match):
        projector.project(x)
