"""Characterise a crossbar through its driver, calibrate the twin from the file: a twin with
hidden options is characterised and its options recovered; bad input is refused by name."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from labpnn import backprop, board_stats
from labpnn.bench import Bench
from labpnn.characterise import Characterisation, CharacteriseSettings
from labpnn.drivers.crossbar import CrossbarBoard
from labpnn.errors import AbortRequested, DataError, DeviceError
from labpnn.instruments.scpi import DataOutOfRange
from labpnn.sim_devices.crossbar import CrossbarPhysics
from labpnn.sim_devices.scpi_server import serve_tcp

from test_cli import labpnn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_calibrate import HIDDEN, characterise_twin, deployed_accuracy, network, recover  # noqa: E402

HIDDEN = HIDDEN["noisy"]  # every fitted option away from the twin's default
ARRAY = {"rows": 256, "cols": 64}


def small_job(path, settings, **options):
    return characterise_twin(path, {**ARRAY, **options}, settings)


@pytest.fixture(scope="module")
def characterised(tmp_path_factory):
    path = tmp_path_factory.mktemp("board") / "board.h5"
    return path, recover(HIDDEN, ARRAY, noise_rows=192, path=path)


@pytest.fixture(scope="module")
def hidden_board(characterised):
    return characterised[0]


@pytest.fixture(scope="module")
def calibrated(characterised):
    return characterised[1][0]


def test_calibration_recovers_the_hidden_options(characterised):
    cal, errors = characterised[1]
    assert all(abs(e) < 0.10 for e in errors.values()), errors
    assert cal.options["rows"] == 256 and cal.options["prog_iterations"] == 30
    assert cal.options["r_wire"] == 0.0  # the hidden board has no IR drop


def test_a_trained_network_deploys_alike_on_the_board_and_its_twin(calibrated, tmp_path):
    twin = Bench.load(calibrated.write(tmp_path / "twin.yaml"))  # the file the CLI writes loads as a bench
    assert twin["crossbar"].options.read_noise_rel == pytest.approx(calibrated.options["read_noise_rel"])
    net, recipe, ds = network("digits", [32, 16], epochs=15)
    on_board = deployed_accuracy(net, recipe, ds, {**ARRAY, **HIDDEN}, range(20)).mean()
    on_twin = deployed_accuracy(net, recipe, ds, calibrated.options, range(20)).mean()
    assert on_board < backprop.accuracy(net, ds.x_test, ds.y_test) - 0.02  # the board costs accuracy
    assert abs(on_board - on_twin) < 0.01, (on_board, on_twin)


def test_the_cli_characterises_reports_and_calibrates(tmp_path):
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump({"instruments": {"xbar": {"driver": "sim-crossbar", "options": {
        "rows": 64, "cols": 32, "seed": 1, "stuck_fraction": 0.05}}}}))
    out = tmp_path / "board.h5"
    done = labpnn("characterise", "crossbar", "--config", bench, "--instrument", "xbar", "--out", out,
                  "--noise-rows", 32, "--drift-times", "", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "stuck cells" in done.stdout and " uS" in done.stdout
    assert {p.name for p in (tmp_path / "board").iterdir()} >= {"report.md", "read_noise.png", "drift.png",
                                                                "conductance_map.png", "programming.png",
                                                                "mvm_adc.png"}
    assert "| read noise |" in (tmp_path / "board" / "report.md").read_text()
    done = labpnn("calibrate", out, "--out", tmp_path / "twin.yaml")
    assert done.returncode == 0, done.stderr
    options = Bench.load(tmp_path / "twin.yaml")["crossbar"].options
    assert options.stuck_fraction == pytest.approx(0.05, rel=0.15) and options.drift_nu == 0


def test_a_board_refusing_a_command_is_left_safe_and_the_file_keeps_what_was_measured(tmp_path, monkeypatch):
    path = tmp_path / "board.h5"
    board, job = small_job(path, CharacteriseSettings(noise_rows=16, drift_times=[]))
    mvm = board.physics.mvm

    def refuse(*args, **kwargs):
        assert board.physics.output  # the sweep switched the output on
        raise DataOutOfRange("read voltage refused by the test")

    monkeypatch.setattr(board.physics, "mvm", refuse)
    with pytest.raises(DeviceError, match="step 'linearity'.*read voltage refused.*safe state"):
        job.run()
    assert not board.physics.output and board.physics.prog_iterations == 30
    with h5py.File(path) as h5:
        assert not h5.attrs["complete"] and "linearity" in h5.attrs["stopped"]
        assert {"stuck", "single_pulse", "verify", "drift"} <= set(h5)
    with pytest.raises(DataError, match="'linearity', 'adc_range' missing.*linearity"):
        board_stats.load(path)
    monkeypatch.setattr(board.physics, "mvm", mvm)


def test_an_interrupted_characterisation_stops_with_the_board_reset(tmp_path):
    board, job = small_job(tmp_path / "board.h5", CharacteriseSettings(noise_rows=16))
    sleep = job.sleep

    def interrupt(dt):  # Ctrl-C while waiting for the drift re-reads
        job.stop.set()
        sleep(dt)

    job.sleep = interrupt
    with pytest.raises(AbortRequested):
        job.run()
    assert not board.physics.output
    assert np.allclose(board.physics.conductance(), board.physics.options.g_min)  # *RST: cells to g_min
    with pytest.raises(DataError, match="'drift'.*missing.*stopped during drift"):
        board_stats.load(tmp_path / "board.h5")


def test_a_file_missing_a_measurement_is_refused_by_name(hidden_board, tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(hidden_board.read_bytes())
    with h5py.File(broken, "a") as h5:
        del h5["verify/reads"]
    with pytest.raises(DataError, match="'verify' lacks dataset.*reads"):
        board_stats.load(broken)
    result = labpnn("calibrate", broken, "--out", tmp_path / "twin.yaml")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "reads" in result.stderr
    assert not (tmp_path / "twin.yaml").exists()


@pytest.fixture
def wire_board():
    """The driver on the SCPI wire, against a twin with stuck cells served over TCP."""
    physics = CrossbarPhysics(rows=32, cols=16, seed=4, stuck_fraction=0.05)
    server, address = serve_tcp(physics)
    yield physics, CrossbarBoard(resource=address, timeout_ms=5000)
    server.close()


def test_characterisation_through_the_driver_on_the_wire(wire_board, tmp_path):
    physics, board = wire_board
    Characterisation(board, tmp_path / "board.h5", CharacteriseSettings(noise_rows=16, drift_times=[]),
                     progress=False).run()
    found = board_stats.stuck(board_stats.load(tmp_path / "board.h5"))
    assert found["high"] + found["low"] == len(physics.stuck_cells) > 0
    assert not physics.output and board.connected


def test_a_board_fault_reported_mid_characterisation_names_the_step_over_the_wire(wire_board, tmp_path):
    physics, board = wire_board
    physics.inject_fault("broken_adc", columns=[3], reported=True)  # MEAS:MVM? on it fails with -310
    with pytest.raises(DeviceError, match=r"step 'linearity'.*-310.*ADC fault on columns \[3\].*safe state"):
        Characterisation(board, tmp_path / "board.h5", CharacteriseSettings(noise_rows=16, drift_times=[]),
                         progress=False).run()
    assert not physics.output
