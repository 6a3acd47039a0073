"""The crossbar unit on the in-process twin: deploy, measure, read back, matches."""

import numpy as np
import pytest
import torch

from labpnn.errors import DeviceError
from labpnn.protocols import Unit
from labpnn.sim_devices.crossbar import SimCrossbarBoard
from labpnn.units.crossbar import CrossbarUnit


@pytest.fixture
def board():
    with SimCrossbarBoard(seed=0, rows=128, cols=128) as b:
        yield b


def model_output(unit, h):
    with torch.no_grad():
        return unit.model()(torch.as_tensor(h)).numpy()


def test_the_unit_protocol_and_its_model(board):
    unit = CrossbarUnit("u0", board, 41, 64, activation="tanh", seed=3)
    assert isinstance(unit, Unit) and unit.instruments() == [board]
    linear, act = unit.model()
    assert isinstance(linear, torch.nn.Linear) and (linear.in_features, linear.out_features) == (41, 64)
    h = np.random.default_rng(0).standard_normal((5, 41))
    assert unit.prepare(h).dtype == np.float32
    np.testing.assert_allclose(model_output(unit, unit.prepare(h)),
                               np.tanh(unit.prepare(h) @ linear.weight.detach().numpy().T
                                       + linear.bias.detach().numpy()), atol=1e-5)
    same = CrossbarUnit("u0", board, 41, 64, activation="tanh", seed=3)
    assert torch.equal(same.model()[0].weight, linear.weight)


def test_a_device_that_is_not_a_crossbar_is_refused():
    with pytest.raises(TypeError, match="unit 'u0': object is not a CrossbarArray"):
        CrossbarUnit("u0", object(), 4, 2)


def test_deploy_programs_weights_and_bias_as_an_extra_row(board):
    unit = CrossbarUnit("u0", board, 41, 64, seed=1)
    result = unit.deploy()
    assert {k: v.shape for k, v in result.items()} == unit.deployed_shapes() == {
        "weights": (42, 64), "g_target": (42, 128), "g_read": (42, 128)}
    linear = unit.model()[0]
    expected = np.vstack([linear.weight.detach().numpy().T, linear.bias.detach().numpy()[None]])
    error = result["weights"] - expected  # calibrated twin: +-4.8 uS write-verify, 3.5 uS read noise
    assert np.sqrt(np.mean(error ** 2)) < 0.15 * np.abs(expected).max()
    assert unit.read_back()["weights"].shape == (42, 64)
    no_bias = CrossbarUnit("u1", board, 41, 64, bias=False)
    assert no_bias.deploy()["weights"].shape == no_bias.deployed_shapes()["weights"] == (41, 64)


def test_measure_follows_the_model_within_noise(board):
    unit = CrossbarUnit("u0", board, 41, 64, activation="relu", seed=2)
    h = np.abs(np.random.default_rng(1).standard_normal((200, 41))).astype(np.float32)
    np.testing.assert_allclose(unit.expected(h), model_output(unit, h), rtol=1e-4, atol=1e-5)
    unit.deploy()
    measured, ideal = unit.measure(h), model_output(unit, h)
    assert measured.dtype == np.float32 and measured.shape == (200, 64) and measured.min() >= 0
    assert np.linalg.norm(measured - ideal) < 0.2 * np.linalg.norm(ideal)
    with torch.no_grad():
        unit.model()[0].weight.mul_(2)  # retrained after deployment: expected() keeps the board's
    np.testing.assert_allclose(unit.expected(h), ideal, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(unit.measure(h), measured)  # fresh read noise each time
    with pytest.raises(ValueError, match=r"expected \(n, 41\)"):
        unit.measure(h[:, :40])


def test_clipped_deployment_spends_the_conductance_range_on_the_bulk_of_the_weights(board):
    """One outlying weight sets the conductance scale of an unclipped deployment; clipped at
    2x the RMS, every other weight is programmed with several times the resolution."""
    errors = {}
    for clip in (None, 2.0):
        unit = CrossbarUnit("u0", board, 41, 64, seed=6, clip=clip)
        with torch.no_grad():
            unit.model()[0].weight[0, 0] = 50 * unit.model()[0].weight.abs().max()
        w = unit._model_matrix()
        read = unit.deploy()["weights"]
        rms = np.sqrt(np.mean(w ** 2))
        bulk = np.abs(w) < 2 * rms
        errors[clip] = np.sqrt(np.mean((read - w)[bulk] ** 2))
        if clip:
            assert np.abs(read).max() < 1.5 * clip * rms  # the outlier was clipped
    assert errors[2.0] < errors[None] / 3, errors


def test_matches_holds_for_a_healthy_array_and_fails_for_another_deployment(board):
    unit = CrossbarUnit("u0", board, 41, 64, seed=4)
    deployed = unit.deploy()
    assert all(unit.matches(deployed) for _ in range(5))
    other = CrossbarUnit("u1", board, 41, 64, seed=5)
    other.deploy()
    assert not unit.matches(deployed)
    unit.deploy()  # the same weights programmed afresh: a new programming error
    assert not unit.matches(deployed) and unit.matches(unit.read_back())


def test_matches_fails_for_a_few_stuck_cells_on_a_quiet_board():
    """A single read sees ~20 stuck cells in 5 000 only when read noise is well below the
    calibrated 15 % (the calibrated board leaves them to the verification's channel checks)."""
    with SimCrossbarBoard(seed=0, rows=128, cols=128, read_noise_rel=0.02, prog_tolerance=0.03) as quiet:
        unit = CrossbarUnit("u0", quiet, 41, 64, seed=4)
        deployed = unit.deploy()
        assert unit.matches(deployed)
        quiet.inject_fault("stuck_cells", count=60, at="g_max")  # ~20 of them in the 42 x 128 cells used
        assert not unit.matches(deployed)
        quiet.clear_faults()
        assert unit.matches(deployed)


def test_a_resumed_unit_recognises_the_board_and_a_reset_board_does_not_match(board):
    deployed = CrossbarUnit("u0", board, 10, 8, seed=5).deploy()
    resumed = CrossbarUnit("u0", board, 10, 8, seed=5)
    assert resumed.matches(deployed)
    assert resumed.measure(np.ones((2, 10), np.float32)).shape == (2, 8)
    board.reset()
    assert not resumed.matches(deployed)


def test_units_sharing_a_board_take_turns(board):
    first = CrossbarUnit("u0", board, 10, 8, seed=6)
    second = CrossbarUnit("u1", board, 8, 4, seed=7)
    h = np.random.default_rng(2).uniform(0, 1, (50, 10)).astype(np.float32)
    first.deploy()
    before = first.measure(h)
    expected = first.deploy()
    second.deploy()
    assert not first.matches(expected)
    with pytest.raises(DeviceError, match="another deployment"):
        first.read_back()
    after = first.measure(h)  # programs its own weights again
    assert np.linalg.norm(after - before) < 0.3 * np.linalg.norm(before)
    assert first.read_back()["weights"].shape == (11, 8)
