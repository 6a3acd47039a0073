"""The engine end to end on the in-process twins: states, checkpoints, events, the run file."""

import threading

import numpy as np
import pytest

from engine_helpers import tiny_recipe, twin_bench
from labpnn.engine import Run, State
from labpnn.errors import ConfigError
from labpnn.runlog import RunReader


def run_collecting(run: Run):
    events = []
    run.bus.subscribe(events.append)
    return events


def test_full_run_on_twins(tmp_path):
    bench = twin_bench(tmp_path)
    run = Run(tiny_recipe(), bench, tmp_path / "run.h5")
    events = run_collecting(run)
    assert run.execute() is State.DONE
    summary = RunReader(tmp_path / "run.h5").summary()
    assert summary["state"] == "done"
    assert [len(u["info_plane"]) for u in summary["units"]] == [12, 12]
    assert [p["step"] for p in summary["units"][0]["info_plane"]] == list(range(12))
    assert all(p["I_XZ"] > 0 and p["I_YZ"] > 0 for u in summary["units"] for p in u["info_plane"])
    assert summary["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    kinds = {e.kind for e in events}
    assert {"state", "phase", "step", "info_plane", "deployed", "measure", "accuracy"} <= kinds
    assert summary["provenance"]["data_simulated"] is True
    assert "crossbar" in summary["bench"]
    assert bench["crossbar"].output is False  # safe state at the end
    reader = RunReader(tmp_path / "run.h5")
    measured = reader.unit(0).features("test")
    assert measured.shape == (100, 16) and np.isfinite(measured).all()


def test_pause_resume_abort_from_another_thread(tmp_path):
    bench = twin_bench(tmp_path)
    run = Run(tiny_recipe(pib={"steps": 400, "batch_size": 32}), bench, tmp_path / "run.h5")
    states = []
    run.bus.subscribe(lambda e: states.append(e.data["state"]) if e.kind == "state" else None)
    steps = threading.Event()
    run.bus.subscribe(lambda e: steps.set() if e.kind == "step" and e.data["step"] >= 3 else None)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("state", run.execute()))
    worker.start()
    assert steps.wait(60)
    run.pause()
    assert run.states.wait_for(State.PAUSED, timeout=60) is State.PAUSED
    assert bench["crossbar"].output is False  # instruments safe while paused
    paused_at = len(RunReader(tmp_path / "run.h5").unit(0).info_plane)
    threading.Event().wait(0.3)
    assert len(RunReader(tmp_path / "run.h5").unit(0).info_plane) == paused_at  # nothing runs while paused
    run.unpause()
    run.abort("test abort")
    worker.join(60)
    assert not worker.is_alive()
    assert result["state"] is State.IDLE
    assert states[-3:] == ["running", "aborting", "idle"] or states[-2:] == ["aborting", "idle"]
    assert "pausing" in states and "paused" in states
    summary = RunReader(tmp_path / "run.h5").summary()
    assert summary["state"] == "idle" and "test abort" in summary["reason"]


def test_aborted_run_resumes_to_completion_without_duplicate_steps(tmp_path):
    bench = twin_bench(tmp_path)
    run = Run(tiny_recipe(), bench, tmp_path / "run.h5")
    run.bus.subscribe(lambda e: run.abort("stop early") if e.kind == "step" and e.data["step"] == 5 else None)
    assert run.execute() is State.IDLE
    resumed = Run.reopen(tmp_path / "run.h5", twin_bench(tmp_path))
    assert resumed.execute() is State.DONE
    info = RunReader(tmp_path / "run.h5").unit(0).info_plane
    assert list(info["step"]) == list(range(12))


def test_resume_matches_an_uninterrupted_run(tmp_path):
    full = Run(tiny_recipe(), twin_bench(tmp_path), tmp_path / "full.h5")
    full.execute()
    cut = Run(tiny_recipe(), twin_bench(tmp_path), tmp_path / "cut.h5")
    cut.bus.subscribe(lambda e: cut.abort("cut") if e.kind == "step" and e.data["step"] == 7 else None)
    cut.execute()
    Run.reopen(tmp_path / "cut.h5", twin_bench(tmp_path)).execute()
    a = RunReader(tmp_path / "full.h5").unit(0).info_plane
    b = RunReader(tmp_path / "cut.h5").unit(0).info_plane
    np.testing.assert_allclose(a["I_YZ"], b["I_YZ"], rtol=1e-6)


def test_recipe_naming_a_missing_instrument(tmp_path):
    recipe = tiny_recipe(units=[{"kind": "crossbar", "instrument": "xbar2", "out": 8}])
    with pytest.raises(ConfigError, match="xbar2.*lacks.*crossbar"):
        Run(recipe, twin_bench(tmp_path), tmp_path / "run.h5")


def test_recipe_asking_the_wrong_capability(tmp_path):
    bench = {"instruments": {"crossbar": {"driver": "sim-crossbar"},
                             "opu": {"driver": "sim-opu", "options": {"n_components": 100,
                                                                 "max_n_features": 64}}}}
    recipe = tiny_recipe(units=[{"kind": "crossbar", "instrument": "opu", "out": 8}])
    with pytest.raises(ConfigError, match="needs a CrossbarArray; instrument 'opu'"):
        Run(recipe, twin_bench(tmp_path, bench), tmp_path / "run.h5").execute()


def test_recipe_bench_size_mismatch(tmp_path):
    bench = {"instruments": {"opu": {"driver": "sim-opu", "options": {"n_components": 100,
                                                                 "max_n_features": 32}}}}
    recipe = tiny_recipe(units=[{"kind": "scattering", "instrument": "opu", "out": 8}])
    with pytest.raises(ConfigError, match="input has 64 features.*.opu. takes at most 32"):
        Run(recipe, twin_bench(tmp_path, bench), tmp_path / "run.h5").execute()
    assert not (tmp_path / "run.h5").exists()  # a bad configuration is refused before anything is written


def test_refuses_to_overwrite_a_run(tmp_path):
    (tmp_path / "run.h5").write_bytes(b"x")
    with pytest.raises(ConfigError, match="exists already"):
        Run(tiny_recipe(), twin_bench(tmp_path), tmp_path / "run.h5")
