"""The replay instrument: a recorded run served through the crossbar protocol. Replaying the
recipe reproduces the run exactly (a regression test driven by a recording); the readout or
downstream units can be retrained offline on it; what it has no recording for is refused."""

import numpy as np
import pytest
import torch

from engine_helpers import TINY, TWIN_BENCH, tiny_recipe, twin_bench, write_yaml
from labpnn.bench import Bench
from labpnn.engine import Run, State
from labpnn.errors import ConfigError, DeviceError
from labpnn.protocols import CrossbarArray
from labpnn.runlog import RunReader
from labpnn.units.crossbar import CrossbarUnit

from test_cli import labpnn


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recorded")
    path = tmp / "run.h5"
    assert Run(tiny_recipe(), twin_bench(tmp), path).execute() is State.DONE
    return path


def replay(tmp_path, run_file, **extra):
    return Bench.load(write_yaml(tmp_path / "replay.yaml", {"instruments": {
        "crossbar": {"driver": "replay", "resource": str(run_file)}, **extra}}))


def features(path, unit, split="test"):
    with RunReader(path) as r:
        return r.unit(unit).features(split)


def test_replaying_the_recipe_reproduces_the_recorded_run(recorded, tmp_path):
    again = tmp_path / "again.h5"
    bench = replay(tmp_path, recorded)
    assert isinstance(bench["crossbar"], CrossbarArray)
    assert Run(tiny_recipe(), bench, again).execute() is State.DONE
    for unit in (0, 1):
        for split in ("train", "test"):
            assert np.array_equal(features(again, unit, split), features(recorded, unit, split))
    with RunReader(recorded) as r0, RunReader(again) as r1:
        assert r1.test_accuracy == r0.test_accuracy
        assert r1.provenance["replay"] == {"crossbar": str(recorded)}
        assert r1.provenance["simulated"] == {"crossbar": True}  # the recording came from the twin
        assert r1.bench["crossbar"]["identity"].startswith("REPLAY of LABPNN,XBAR-SIM")


def test_the_readout_and_downstream_units_retrain_offline_on_a_recording(recorded, tmp_path):
    bench = replay(tmp_path, recorded, twin=TWIN_BENCH["instruments"]["crossbar"])
    data = {**TINY, "readout": {"steps": 20}}
    data["units"] = [TINY["units"][0], {**TINY["units"][1], "instrument": "twin", "pib": {"beta": 0.1}}]
    out = tmp_path / "offline.h5"
    assert Run(tiny_recipe(**data), bench, out).execute() is State.DONE
    assert np.array_equal(features(out, 0), features(recorded, 0))  # served from the recording
    assert not np.array_equal(features(out, 1), features(recorded, 1))  # retrained on the twin


def test_a_recording_of_another_recipe_is_refused_before_anything_runs(recorded, tmp_path):
    other = {**TINY, "units": [TINY["units"][0], {**TINY["units"][1], "out": 4}]}
    with pytest.raises(ConfigError, match=r"no recording for recipe 'tiny'.*units\.1\.out: 4 \(recorded 8\)"):
        Run(tiny_recipe(**other), replay(tmp_path, recorded), tmp_path / "other.h5").execute()
    recipe = write_yaml(tmp_path / "digits.yaml", {**TINY, "dataset": {**TINY["dataset"], "n_test": 50}})
    done = labpnn("run", "--recipe", recipe, "--config", tmp_path / "replay.yaml", "--out", tmp_path / "x.h5",
                  "--quiet")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "dataset.n_test: 50 (recorded 100)" in done.stderr


def test_weights_and_inputs_without_a_recording_are_refused(recorded, tmp_path):
    device = replay(tmp_path, recorded)["crossbar"]
    device.connect()
    unit = CrossbarUnit("u", device, 64, 16, clip=None)  # TINY's unit 0 on digits (64 pixels)
    with RunReader(recorded) as r:
        unit.model().load_state_dict({k: torch.as_tensor(v) for k, v in r.unit(0).trained.items()})
    with pytest.raises(DeviceError, match=r"no recording for these \(65, 16\) weights.*differs by"):
        device.program_weights(unit.deployment_matrix() * 1.01)
    deployed = unit.deploy()
    with RunReader(recorded) as r:
        assert np.array_equal(deployed["g_read"], r.unit(0).deployed["g_read"])
    with pytest.raises(DeviceError, match="no recording for input row 0 .*dataset digits"):
        unit.measure(np.full((3, 64), 0.5, np.float32))
    with pytest.raises(DeviceError, match=r"no recording for a \(9, 4\) weight matrix"):
        device.program_weights(np.ones((9, 4), np.float32))


def test_a_replay_needs_a_run_file(tmp_path):
    with pytest.raises(ConfigError, match="resource.*RUN.h5"):
        Bench.load(write_yaml(tmp_path / "b.yaml", {"instruments": {"crossbar": {"driver": "replay"}}}))
