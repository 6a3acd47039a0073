"""The crossbar twin: its physics model and the in-process device (mapping, tiling, faults)."""

import numpy as np
import pytest

from labpnn.instruments.crossbar_mapping import (CODE_ROWS, BoardConfig, dac_codes,
                                                 differential_pairs, plan_tiles)
from labpnn.instruments.scpi import DataOutOfRange, DeviceSpecificError, SettingsConflict
from labpnn.errors import DeviceError
from labpnn.protocols import CrossbarArray, FaultInjectable
from labpnn.sim_devices.crossbar import CrossbarPhysics, SimCrossbarBoard, gaussian

QUIET = dict(prog_noise=0.0, read_noise_rel=0.0, read_noise_abs=0.0, d2d=0.0)


# Below the calibrated noise, so that a mapping or tiling error shows through the noise.
LOW_NOISE = dict(read_noise_rel=0.05, prog_tolerance=0.03)


def programmed(physics, g):
    physics.program(0, 0, np.asarray(g))
    return physics


# ---------------------------------------------------------------- physics


def test_read_noise_spread_is_a_few_microsiemens_at_23_uS():
    p = programmed(CrossbarPhysics(seed=1, rows=64, cols=64, prog_noise=0.0), np.full((64, 64), 23e-6))
    reads = np.stack([p.read(0, 0, 64, 64) for _ in range(20)])
    shot_to_shot = (reads - reads.mean(axis=0)).std() * np.sqrt(20 / 19)
    assert 2.5e-6 < shot_to_shot < 5e-6  # calibrated: 0.15 G = 3.5 uS (docs/calibration.md)
    assert abs(reads.mean() - 23e-6) < 1.5e-6


def test_programming_snaps_to_quantised_levels():
    p = CrossbarPhysics(rows=4, cols=4, levels=5, g_min=0.0 + 1e-6, g_max=41e-6, **QUIET)
    targets = np.array([[1e-6, 5e-6, 12e-6, 19e-6]] * 4)
    p.program(0, 0, targets)
    levels = np.linspace(1e-6, 41e-6, 5)  # 1, 11, 21, 31, 41 uS
    expected = levels[np.abs(targets[..., None] - levels).argmin(-1)]
    np.testing.assert_allclose(p.read(0, 0, 4, 4), expected, rtol=1e-6)
    assert p.prog_status == (16, 0)


def test_write_verify_lands_within_tolerance_and_counts_failures():
    p = CrossbarPhysics(seed=3, rows=32, cols=32, read_noise_rel=0.0, read_noise_abs=0.0,
                        prog_tolerance=0.01, prog_iterations=200)
    p.program(0, 0, np.full((32, 32), 20e-6))
    assert p.prog_status == (1024, 0)
    levels = np.linspace(1e-6, 40e-6, 64)
    level = levels[np.abs(levels - 20e-6).argmin()]
    assert np.abs(p.conductance() - level).max() <= 0.01 * 40e-6 * (1 + 1e-5)
    assert np.abs(p.conductance() - level).max() > 0  # programming noise is there
    p.prog_iterations = 1
    p.prog_tolerance = 1e-4
    ok, failed = p.program(0, 0, np.full((32, 32), 30e-6))
    assert failed > 900 and ok + failed == 1024


def test_adc_quantises_and_clips_at_its_range():
    p = programmed(CrossbarPhysics(rows=2, cols=2, adc_bits=4, adc_range=10e-6, **QUIET),
                   np.array([[10e-6, 40e-6], [10e-6, 40e-6]]))
    p.output = True
    current = p.mvm(np.array([[0.1, 0.0]], np.float32), 0, 0, 2)[0]
    step = 10e-6 / 8  # 4 bits over +-10 uA
    assert current[0] == pytest.approx(1 * step)  # 1.0 uA -> 1.25 uA
    assert current[1] == pytest.approx(3 * step)  # 4.0 uA -> 3.75 uA
    big = p.mvm(np.array([[0.2, 0.2]], np.float32), 0, 0, 2)[0]
    assert big[1] == pytest.approx(10e-6)  # 16 uA clips at the 10 uA range
    assert p.mvm(np.array([[-0.2, -0.2]], np.float32), 0, 0, 2)[0, 1] == pytest.approx(-10e-6)


def test_read_noise_samples_are_standard_normal_cut_at_4_3_sigma():
    z = gaussian(np.random.default_rng(0), (1000, 1000))
    assert z.dtype == np.float32
    assert abs(z.mean()) < 3e-3 and abs(z.std() - 1) < 3e-3
    assert abs(np.mean(np.abs(z) < 1) - 0.6827) < 2e-3  # N(0, 1) within one sigma
    assert abs(np.mean(np.abs(z) < 2) - 0.9545) < 1e-3
    assert 4.2 < np.abs(z).max() < 4.34


def test_mvm_noise_has_the_models_mean_and_spread():
    """Per output: mean x @ G, sigma |x| sqrt(mean over the rows of (rel G)^2 + abs^2)."""
    rng = np.random.default_rng(5)
    p = programmed(CrossbarPhysics(seed=2, rows=256, cols=16, d2d=0.0, adc_bits=20),
                   rng.uniform(2e-6, 38e-6, (256, 16)))
    p.output = True
    x = rng.uniform(-0.2, 0.2, (8, 256)).astype(np.float32)
    out = np.stack([p.mvm(x, 0, 0, 16) for _ in range(400)])
    g = p.conductance().astype(np.float64)
    o = p.options
    sigma = (np.linalg.norm(x.astype(np.float64), axis=1)[:, None]
             * np.sqrt(((o.read_noise_rel * g) ** 2 + o.read_noise_abs ** 2).mean(axis=0)))
    np.testing.assert_allclose(out.mean(axis=0), x.astype(np.float64) @ g,
                               atol=4 * sigma.max() / np.sqrt(400))
    np.testing.assert_allclose(out.std(axis=0), sigma, rtol=0.15)
    assert abs(out.std(axis=0).mean() / sigma.mean() - 1) < 0.02


def test_noiseless_mvm_is_the_float64_product_within_the_adc_step():
    rng = np.random.default_rng(6)
    p = programmed(CrossbarPhysics(rows=1024, cols=128, adc_bits=24, adc_range=10e-3, **QUIET),
                   rng.uniform(1e-6, 40e-6, (1024, 128)))
    p.output = True
    x = rng.uniform(-0.2, 0.2, (300, 1024)).astype(np.float32)
    exact = x.astype(np.float64) @ p.conductance().astype(np.float64)
    assert np.abs(p.mvm(x, 0, 0, 128) - exact).max() <= p.adc_lsb


def test_ir_drop_lowers_column_currents():
    g = np.full((16, 2), 40e-6)
    ideal = programmed(CrossbarPhysics(rows=16, cols=2, adc_bits=20, **QUIET), g)
    dropped = programmed(CrossbarPhysics(rows=16, cols=2, adc_bits=20, r_wire=500.0, **QUIET), g)
    x = np.full((1, 16), 0.1, np.float32)
    for p in (ideal, dropped):
        p.output = True
    ratio = dropped.mvm(x, 0, 0, 2) / ideal.mvm(x, 0, 0, 2)
    np.testing.assert_allclose(ratio, 1 / (1 + 500.0 * 16 * 40e-6), rtol=1e-3)


def test_drift_follows_a_power_law():
    now = [0.0]
    p = CrossbarPhysics(rows=2, cols=2, drift_nu=0.1, clock=lambda: now[0], **QUIET)
    p.program(0, 0, np.full((2, 2), 30e-6))
    g0 = p.conductance().copy()
    now[0] = 20.0 * 100  # t = 100 t0
    np.testing.assert_allclose(p.conductance(), g0 * 100 ** -0.1, rtol=1e-5)


def test_refusals_change_nothing():
    p = programmed(CrossbarPhysics(rows=4, cols=4, **QUIET), np.full((4, 4), 10e-6))
    before = p.read(0, 0, 4, 4)
    with pytest.raises(DataOutOfRange, match="outside the range"):
        p.program(0, 0, np.array([[20e-6, 50e-6]]))
    with pytest.raises(DataOutOfRange, match="outside the 4x4 array"):
        p.program(3, 3, np.full((2, 2), 20e-6))
    np.testing.assert_array_equal(p.read(0, 0, 4, 4), before)
    with pytest.raises(SettingsConflict):
        p.mvm(np.zeros((1, 4), np.float32), 0, 0, 4)
    p.output = True
    with pytest.raises(DataOutOfRange, match="exceeds the limit"):
        p.mvm(np.full((1, 4), 0.3, np.float32), 0, 0, 4)
    assert p.applied_vectors == 0
    with pytest.raises(DataOutOfRange):
        p.v_limit = 0.6  # above the hardware maximum
    with pytest.raises(SettingsConflict):
        p.g_range = (20e-6, 10e-6)
    assert p.v_limit == 0.2 and p.g_range == (1e-6, 40e-6)


def test_broken_adc_column_reads_wrong_while_diagnostics_say_healthy():
    p = programmed(CrossbarPhysics(rows=8, cols=4, **QUIET), np.full((8, 4), 20e-6))
    p.output = True
    x = np.full((3, 8), 0.1, np.float32)
    healthy = p.mvm(x, 0, 0, 4)
    p.inject_fault("broken_adc", columns=[2], mode="constant", value=0.0)
    broken = p.mvm(x, 0, 0, 4)
    assert np.all(broken[:, 2] == 0) and np.all(healthy[:, 2] > 0)
    np.testing.assert_array_equal(broken[:, [0, 1, 3]], healthy[:, [0, 1, 3]])
    assert not p.adc_health().any() and p.self_test_code() == 0
    p.inject_fault("broken_adc", columns=[1], mode="garbage")
    assert np.abs(p.mvm(x, 0, 0, 4)[:, 1] - healthy[:, 1]).max() > 1e-6
    p.clear_faults()
    np.testing.assert_array_equal(p.mvm(x, 0, 0, 4), healthy)


def test_a_reported_adc_fault_fails_the_self_test_and_the_mvm():
    p = CrossbarPhysics(rows=8, cols=4, **QUIET)
    p.inject_fault("broken_adc", columns=[3], reported=True)
    assert p.self_test_code() == 1 and p.adc_health().tolist() == [0, 0, 0, 1]
    p.output = True
    with pytest.raises(DeviceSpecificError, match=r"columns \[3\]"):
        p.mvm(np.zeros((1, 8), np.float32), 0, 0, 4)
    assert p.mvm(np.zeros((1, 8), np.float32), 0, 0, 3).shape == (1, 3)  # other columns fine


def test_stuck_cells_hold_their_level_through_programming():
    p = CrossbarPhysics(seed=5, rows=16, cols=16, **QUIET)
    p.inject_fault("stuck_cells", count=10, at="g_max")
    stuck = p.stuck_cells
    assert len(stuck) == 10
    ok, failed = p.program(0, 0, np.full((16, 16), 10e-6))
    assert failed == 10
    g = p.read(0, 0, 16, 16)
    assert np.all(g[tuple(stuck.T)] == np.float32(40e-6))
    assert np.sum(g == np.float32(40e-6)) == 10
    p.clear_faults()  # never programmed while stuck: back to g_min
    g = p.read(0, 0, 16, 16)
    assert np.all(g[tuple(stuck.T)] == np.float32(1e-6)) and np.all(g > 9e-6) == (len(stuck) == 0)
    p.inject_fault("stuck_cells", fraction=0.5, at="g_min")
    assert len(p.stuck_cells) == 128
    with pytest.raises(ValueError, match="unknown fault"):
        p.inject_fault("dead_link")


def test_same_seed_same_board_other_seed_other_board():
    def run(seed):
        p = CrossbarPhysics(seed=seed, rows=16, cols=8)
        p.inject_fault("stuck_cells", count=3)
        p.program(0, 0, np.full((16, 8), 15e-6))
        p.output = True
        return p.read(0, 0, 16, 8), p.mvm(np.full((4, 16), 0.1, np.float32), 0, 0, 8)
    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


# ---------------------------------------------------------------- mapping and tiling


def test_differential_pairs_encode_signed_weights():
    w = np.array([[1.0, -0.5], [0.0, 0.25]])
    gp, gm, scale = differential_pairs(w, 1e-6, 41e-6)
    np.testing.assert_allclose((gp - gm) / scale, w)
    assert gp.max() == pytest.approx(41e-6) and min(gp.min(), gm.min()) == pytest.approx(1e-6)
    assert np.all((gp == 1e-6) | (gm == 1e-6))  # one side of each pair at g_min


def test_tiles_pack_into_one_array_when_they_fit_and_multiplex_when_not():
    plan = plan_tiles(10, 12, 32, 16)  # two tiles (10x8, 10x4) stacked in one array
    assert len(plan) == 1 and sum(len(p.tiles) for p in plan[0]) == 2
    plan = plan_tiles(50, 20, 32, 16)
    cells = {}
    for group in plan:
        occupied = np.zeros((32, 16), int)
        for p in group:
            for t in p.tiles:
                h, w = t.rows.stop - t.rows.start, 2 * t.width
                occupied[t.r0:t.r0 + h, t.c0:t.c0 + w] += 1
                for i in range(t.rows.start, t.rows.stop):
                    for j in range(t.outs.start, t.outs.stop):
                        cells[i, j] = cells.get((i, j), 0) + 1
        assert occupied.max() == 1  # no overlap within a group
    assert len(plan) > 1 and len(cells) == 50 * 20 and set(cells.values()) == {1}


def test_in_process_twin_implements_the_protocols():
    board = SimCrossbarBoard(name="xb", resource=None, rows=32, cols=16)
    assert isinstance(board, CrossbarArray) and isinstance(board, FaultInjectable)
    assert board.simulated and board.array_shape == (32, 16) and not board.connected
    with pytest.raises(DeviceError, match="not connected"):
        board.program_weights(np.ones((2, 2)))
    with pytest.raises(Exception, match="extra"):
        SimCrossbarBoard(bogus=1)


def test_twin_programs_reads_and_multiplies():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 6)).astype(np.float32)
    x = rng.standard_normal((50, 20)).astype(np.float32)
    with SimCrossbarBoard(seed=0, rows=32, cols=16, **LOW_NOISE) as board:
        result = board.program_weights(w)
        assert result["g_target"].shape == result["g_read"].shape == (20, 12)
        rms = lambda a: np.sqrt(np.mean(a ** 2))  # noqa: E731
        assert rms(result["weights"] - w) < 0.08 * np.abs(w).max()
        y = board.matmul(x)
        assert y.dtype == np.float32 and y.shape == (50, 6)
        assert np.linalg.norm(y - x @ w) < 0.2 * np.linalg.norm(x @ w)
        again = board.read_weights()
        assert 0 < rms(again["weights"] - result["weights"]) < 0.08 * np.abs(w).max()
        snap = board.snapshot()
        assert snap["simulated"] and snap["array_shape"] == [32, 16] and snap["v_limit"] == 0.2
        assert snap["options"]["seed"] == 0


def test_tiled_matmul_matches_the_untiled_one_within_noise():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((50, 20)).astype(np.float32)
    x = rng.standard_normal((40, 50)).astype(np.float32)
    with SimCrossbarBoard(seed=1, rows=32, cols=16, **LOW_NOISE) as small, \
            SimCrossbarBoard(seed=1, **LOW_NOISE) as large:
        small.program_weights(w)
        large.program_weights(w)
        y_small, y_large = small.matmul(x), large.matmul(x)
        assert small.read_weights()["weights"].shape == (50, 20)
    scale = np.linalg.norm(x @ w)
    assert np.linalg.norm(y_small - x @ w) < 0.2 * scale
    assert np.linalg.norm(y_large - x @ w) < 0.2 * scale
    assert np.linalg.norm(y_small - y_large) < 0.3 * scale


def test_clipped_vectors_are_rerun_at_lower_voltage():
    w = np.ones((64, 1), np.float32)
    x = np.ones((2, 64), np.float32)  # every cell at g_max, every row at the limit: 0.5 mA
    with SimCrossbarBoard(rows=64, cols=2, adc_range=200e-6, **QUIET) as board:
        board.program_weights(w)
        np.testing.assert_allclose(board.matmul(x), 64.0, rtol=0.02)
    with SimCrossbarBoard(rows=64, cols=2, adc_range=200e-6, bound_retries=0, **QUIET) as board:
        board.program_weights(w)
        assert board.matmul(x)[0, 0] < 40.0  # clipped


def test_a_board_answering_nan_is_not_asked_again():
    with SimCrossbarBoard(rows=8, cols=4, **QUIET) as board:
        board.program_weights(np.ones((4, 2), np.float32))
        calls = []
        board.physics.mvm = lambda x, *_: calls.append(len(x)) or np.full((len(x), 4), np.nan,
                                                                           np.float32)
        assert np.isnan(board.matmul(np.ones((3, 4), np.float32))).all()
        assert calls == [3]  # NaN is not a clipped output: no re-runs, none of no vectors


def test_out_of_range_inputs_are_refused_and_leave_the_output_off():
    with SimCrossbarBoard(rows=8, cols=4, **QUIET) as board:
        board.program_conductances(0, 0, np.full((2, 2), 10e-6))
        before = board.read_conductances(0, 0, 2, 2)
        with pytest.raises(DataOutOfRange) as info:
            board.program_conductances(0, 0, np.array([[20e-6, 1e-3]]))
        assert info.value.code == -222 and "crossbar" in str(info.value)
        np.testing.assert_array_equal(board.read_conductances(0, 0, 2, 2), before)
        board.output = True
        with pytest.raises(DataOutOfRange, match="exceeds the limit"):
            board.mvm_voltages(0, 0, 2, np.array([[0.1, 0.5]]))
        assert board.output is False and board.physics.applied_vectors == 0
        with pytest.raises(ValueError, match="NaN"):
            board.program_weights(np.array([[np.nan]]))


def test_an_exception_inside_with_leaves_the_output_off():
    board = SimCrossbarBoard(rows=8, cols=4)
    with pytest.raises(RuntimeError):
        with board:
            board.output = True
            raise RuntimeError("boom")
    assert board.physics.output is False and not board.connected


def test_faults_through_the_device_and_self_test():
    with SimCrossbarBoard(rows=8, cols=4) as board:
        assert board.self_test().ok
        board.inject_fault("broken_adc", columns=[1], reported=True)
        health = board.self_test()
        assert not health.ok and "[1]" in health.detail
        board.clear_faults()
        assert board.self_test().ok


def test_reset_forgets_the_deployment():
    with SimCrossbarBoard(rows=8, cols=4) as board:
        board.program_weights(np.ones((2, 2)))
        before = board.deployment_id
        board.reset()
        assert board.deployment_id != before
        with pytest.raises(DeviceError, match="no weights programmed"):
            board.matmul(np.ones((1, 2)))
        np.testing.assert_allclose(board.physics.conductance(), 1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.int8, np.float32])
def test_dac_codes_round_and_clip_every_vector_of_a_batch_of_several_steps(dtype):
    cfg = BoardConfig(8, 8, 1e-6, 4e-5, 0.2, 10, 2e-4, 0.1, 30, 8, 0.2 / 127, 2e-4 / 512)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2 * CODE_ROWS + 5, 16)).astype(np.float32)
    scale = (0.2 / np.abs(x).max(axis=1)).astype(np.float32)
    scale[-1] *= 3  # this vector reaches beyond the DAC: clipped, not wrapped
    codes = dac_codes(x, scale, cfg, dtype)
    exact = np.clip(np.rint(x.astype(np.float64) * scale[:, None] * 127 / 0.2), -127, 127)
    assert codes.dtype == dtype and codes.shape == x.shape
    assert np.abs(codes - exact).max() <= 1  # float32 rounding at a half step at most
    assert (np.abs(codes.astype(int)).max(axis=1) == 127).all()  # each vector spans the range
    assert (np.sign(codes[-1]) == np.sign(np.rint(x[-1] * scale[-1] * 635))).all()
