"""The HDF5 run log: writer, SWMR reader, crashes, resume, damaged files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labpnn.errors import RunLogError
from labpnn.events import InfoEvent, StateChanged, WarningEvent
from labpnn.runlog import (
    FORMAT_VERSION, MESSAGE_BYTES, PHASES, STATES, RunLayout, RunLog, RunReader, UnitLayout,
    format_summary,
)
from labpnn.runlog.h5io import _fixed


def make_layout(n_train: int = 600, n_test: int = 200) -> RunLayout:
    return RunLayout(
        units=[
            UnitLayout(name="crossbar0", kind="crossbar", in_features=40, out_features=16,
                       param_shapes={"weight": (16, 40), "bias": (16,)},
                       deployed_shapes={"weights": (40, 16), "g_target": (40, 32),
                                        "g_read": (40, 32)}, steps=50),
            UnitLayout(name="opu1", kind="scattering", in_features=16, out_features=8,
                       param_shapes={"lin.weight": (8, 16), "odd/name": (3,)},
                       deployed_shapes={}, steps=30),
        ],
        n_train=n_train, n_test=n_test, n_classes=10,
        readout_param_shapes={"weight": (10, 8), "bias": (10,)})


RECIPE = {"name": "demo", "seed": 3, "units": [{"kind": "crossbar"}, {"kind": "scattering"}]}
BENCH = {"crossbar": {"identity": "SIM,XBAR,0,1.0", "settings": {"v_read": 0.2}}}
PROVENANCE = {"labpnn": "0.1.0", "seed": 3, "host": "bench-pc", "simulated": True,
              "argv": ["labpnn", "run", "demo.yaml"]}


def new_log(path: Path, layout: RunLayout | None = None) -> RunLog:
    return RunLog.create(path, layout or make_layout(), recipe=RECIPE, bench=BENCH,
                         provenance=PROVENANCE)


def state_bytes(step: int, size: int = 4000) -> bytes:
    return (step.to_bytes(8, "little") * (size // 8 + 1))[:size]


def trained(unit: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    if unit == 0:
        return {"weight": np.full((16, 40), scale), "bias": np.arange(16.0) * scale}
    return {"lin.weight": np.full((8, 16), scale), "odd/name": np.array([1.0, 2.0, 3.0])}


def deployed0(scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"weights": np.full((40, 16), scale), "g_target": np.full((40, 32), 1e-6),
            "g_read": np.full((40, 32), 1.1e-6 * scale)}


def full_run(path: Path, layout: RunLayout | None = None, final: str = "done") -> None:
    """A complete two-unit run with a fault and a retraining, ending in state `final`."""
    layout = layout or make_layout()
    rng = np.random.default_rng(0)
    with new_log(path, layout) as log:
        log.set_state("running")
        log.event(StateChanged(state="running"))
        for unit in range(2):
            for s in range(layout.units[unit].steps):
                log.step(unit, 0, s, loss=1.0 / (s + 1), i_xz=5.0 - 0.01 * s, i_yz=0.02 * s,
                         state=state_bytes(s))
            log.params(unit, 0, "trained", trained(unit))
            log.checkpoint(unit, 0, "optimised")
            if unit == 0:
                log.params(0, 0, "deployed", deployed0())
            log.checkpoint(unit, 0, "deployed")
            out = layout.units[unit].out_features
            for split, n in (("train", layout.n_train), ("test", layout.n_test)):
                for a in range(0, n, 256):
                    log.features(unit, 0, split, a,
                                 rng.standard_normal((min(256, n - a), out)).astype(np.float32))
            log.checkpoint(unit, 0, "measured")
            log.accuracy(unit, 0, "test", 0.7 + 0.1 * unit, "probe")
        log.fault({"kind": "stuck_channels", "unit": 1, "channels": [2, 5],
                   "accuracy_before": 0.9, "accuracy_after_fault": 0.55,
                   "accuracy_recovered": 0.88, "message": "2 channels stuck; retrained unit 1",
                   "time": time.time()})
        for s in range(10):
            log.step(1, 1, s, loss=0.5, i_xz=4.0, i_yz=1.5, state=state_bytes(s))
        log.params(1, 1, "trained", trained(1, 2.0))
        log.readout({"weight": np.ones((10, 8)), "bias": np.zeros(10)}, 0)
        log.accuracy(None, 0, "train", 0.95, "readout")
        log.accuracy(None, 0, "test", 0.91, "readout")
        log.set_state(final, "finished" if final == "done" else "aborted")


# ----------------------------------------------------------------------------- basics

def test_create_refuses_to_overwrite(tmp_path):
    path = tmp_path / "run.h5"
    path.write_bytes(b"something precious")
    with pytest.raises(RunLogError, match="run.h5"):
        new_log(path)
    assert path.read_bytes() == b"something precious"


def test_create_in_missing_folder(tmp_path):
    with pytest.raises(RunLogError, match="does not exist"):
        new_log(tmp_path / "nope" / "run.h5")


def test_layout_roundtrip_and_metadata(tmp_path):
    path = tmp_path / "run.h5"
    layout = make_layout()
    new_log(path, layout).close()
    with RunReader(path) as r:
        assert r.layout == layout
        assert r.recipe == RECIPE and r.bench == BENCH and r.provenance == PROVENANCE
        assert r.format_version == FORMAT_VERSION
        assert r.state == "idle" and r.reason == ""
        assert [u.name for u in r.units] == ["crossbar0", "opu1"]
        assert [u.kind for u in r.units] == ["crossbar", "scattering"]
        assert r.units[0].info_plane.size == 0 and r.units[0].trained is None
        assert r.test_accuracy is None
        r.verify()
    assert RunLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


def test_swmr_is_on_and_no_variable_length_strings(tmp_path):
    path = tmp_path / "run.h5"
    log = new_log(path)
    assert log._f.swmr_mode
    log.close()
    with h5py.File(path, "r") as f:
        def check(name, obj):
            if isinstance(obj, h5py.Dataset):
                dt = obj.dtype
                fields = [dt[k] for k in dt.names] if dt.names else [dt]
                for t in fields:
                    assert h5py.check_vlen_dtype(t) is None, name
                    info = h5py.check_string_dtype(t)
                    assert info is None or info.length is not None, name
                if obj.chunks is not None:
                    assert obj.fletcher32, name
        f.visititems(check)


def test_full_run_roundtrip(tmp_path):
    path = tmp_path / "run.h5"
    full_run(path)
    with RunReader(path) as r:
        assert r.state == "done" and r.reason == "finished"
        u0, u1 = r.units
        ip = u0.info_plane
        assert list(ip.dtype.names) == ["revision", "step", "loss", "I_XZ", "I_YZ", "time"]
        assert list(ip["step"]) == list(range(50)) and set(ip["revision"]) == {0}
        assert ip["I_XZ"][3] == pytest.approx(4.97) and ip["I_YZ"][3] == pytest.approx(0.06)
        ip1 = u1.info_plane
        assert list(ip1["revision"]) == [0] * 30 + [1] * 10
        np.testing.assert_array_equal(u0.trained["bias"], np.arange(16.0))
        np.testing.assert_array_equal(u0.deployed["g_read"], np.full((40, 32), 1.1e-6))
        assert u1.deployed is None
        assert u1.param_revisions("trained") == [0, 1]
        np.testing.assert_array_equal(u1.params("trained")["lin.weight"], np.full((8, 16), 2.0))
        np.testing.assert_array_equal(u1.params("trained", 0)["lin.weight"], np.ones((8, 16)))
        assert u1.params("trained", 5) is None
        assert u1.params("trained")["odd/name"].tolist() == [1.0, 2.0, 3.0]
        f = u0.features("train")
        assert f.shape == (600, 16) and f.dtype == np.float32 and np.isfinite(f).all()
        assert u0.features("test", 0).shape == (200, 16)
        assert u0.features("test", 3) is None
        assert u0.feature_rows("train") == 600 and u0.feature_rows("test") == 200
        assert u1.revisions == 2
        assert r.checkpoints[:3] == [(0, 0, "optimised"), (0, 0, "deployed"), (0, 0, "measured")]
        assert u1.checkpoints() == [(0, p) for p in PHASES]
        assert r.test_accuracy == pytest.approx(0.91)
        assert r.train_accuracy == pytest.approx(0.95)
        assert [a["unit"] for a in r.accuracies] == [0, 1, None, None]
        (fault,) = r.faults
        assert fault["channels"] == [2, 5] and fault["accuracy_after_fault"] == 0.55
        assert r.events[0] == {"time": pytest.approx(time.time(), abs=60), "kind": "state",
                               "unit": None, "message": "running"}
        np.testing.assert_array_equal(r.readout_params["bias"], np.zeros(10))
        assert [w["action"] for w in r.writers] == ["create", "close"]
        assert r.writer_alive is False
        assert r.duration() >= 0
        r.verify()
        assert not r.damaged


def test_summary_is_json_and_complete(tmp_path):
    path = tmp_path / "run.h5"
    full_run(path)
    with RunReader(path) as r:
        s = r.summary()
    text = json.dumps(s, allow_nan=False)          # no NaN, no NumPy scalars
    assert json.loads(text) == s
    for key in ("recipe", "state", "reason", "units", "test_accuracy", "accuracies", "events",
                "faults", "provenance", "bench"):
        assert key in s
    assert s["state"] in STATES and s["recipe"] == RECIPE
    assert s["test_accuracy"] == pytest.approx(0.91)
    u = s["units"][0]
    assert u["name"] == "crossbar0" and u["kind"] == "crossbar"
    assert set(u["info_plane"][0]) >= {"step", "I_XZ", "I_YZ", "loss", "revision"}
    assert len(u["info_plane"]) == 50
    assert set(s["events"][0]) >= {"time", "kind", "message", "unit"}
    assert s["faults"][0]["kind"] == "stuck_channels"
    text = format_summary(s)
    assert "bits" in text and "91.0 %" in text and "done" in text
    assert "stuck_channels" in text and "crossbar0" in text and "duration" in text


def test_nan_becomes_null(tmp_path):
    path = tmp_path / "run.h5"
    with new_log(path) as log:
        log.step(0, 0, 0, loss=float("nan"), i_xz=float("inf"), i_yz=1.0, state=b"")
        log.accuracy(0, 0, "test", float("nan"), "probe")
        log.fault({"kind": "drift", "unit": 0, "channels": np.array([1, 2]),
                   "accuracy_before": np.float32(0.5), "accuracy_after_fault": float("nan"),
                   "accuracy_recovered": None, "message": "x", "time": 1.0})
    with RunReader(path) as r:
        s = r.summary()
    json.dumps(s, allow_nan=False)
    row = s["units"][0]["info_plane"][0]
    assert row["loss"] is None and row["I_XZ"] is None and row["I_YZ"] == 1.0
    assert s["accuracies"][0]["value"] is None
    f = s["faults"][0]
    assert f["channels"] == [1, 2] and f["accuracy_after_fault"] is None
    assert f["accuracy_before"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- validation

def test_params_validation_and_revisions(tmp_path):
    path = tmp_path / "run.h5"
    with new_log(path) as log:
        with pytest.raises(RunLogError, match=r"shape \(16, 41\)"):
            log.params(0, 0, "trained", {"weight": np.ones((16, 41)), "bias": np.ones(16)})
        with pytest.raises(RunLogError, match="missing"):
            log.params(0, 0, "trained", {"weight": np.ones((16, 40))})
        with pytest.raises(RunLogError, match="not in the layout"):
            log.params(0, 0, "trained", {"weight": np.ones((16, 40)), "bias": np.ones(16),
                                         "extra": np.ones(1)})
        with pytest.raises(RunLogError, match="kind"):
            log.params(0, 0, "measured", trained(0))
        with pytest.raises(RunLogError, match="no unit 7"):
            log.params(7, 0, "trained", trained(0))
        with pytest.raises(RunLogError, match="negative"):
            log.params(0, -1, "trained", trained(0))
        log.params(0, 0, "trained", trained(0, 1.0))
        log.params(0, 1, "trained", trained(0, 2.0))      # append revision 1
        log.params(0, 0, "trained", trained(0, 3.0))      # redo revision 0: overwrite
        log.params(0, 3, "trained", trained(0, 4.0))      # revision 2 skipped: NaN, uncommitted
    with RunReader(path) as r:
        u = r.units[0]
        assert u.param_revisions() == [0, 1, 3]
        assert u.params("trained", 0)["bias"][1] == 3.0
        assert u.params("trained", 1)["bias"][1] == 2.0
        assert u.params("trained", 2) is None
        assert u.trained["bias"][1] == 4.0
        with h5py.File(path, "r") as f:
            assert f["units/0/params/trained/weight"].shape == (4, 16, 40)


def test_writer_reads_back_what_it_wrote(tmp_path):
    path = tmp_path / "run.h5"
    with new_log(path) as log:
        with pytest.raises(RunLogError, match="no trained params of revision 0"):
            log.read_params(0, 0, "trained")
        with pytest.raises(RunLogError, match="no test features"):
            log.read_features(0, 0, "test")
        with pytest.raises(RunLogError, match="no readout"):
            log.read_readout(0)
        log.params(0, 0, "trained", trained(0, 2.0))
        log.params(0, 0, "deployed", deployed0())
        log.features(0, 0, "test", 0, np.ones((200, 16)))
        log.readout({"weight": np.ones((10, 8)), "bias": np.arange(10.0)}, 0)
        log.checkpoint(-1, 0, "optimised")                    # the readout
        np.testing.assert_array_equal(log.read_params(0, 0, "trained")["weight"],
                                      np.full((16, 40), 2.0))
        assert log.read_params(0, 0, "deployed")["g_read"].shape == (40, 32)
        f = log.read_features(0, 0, "test")
        assert f.shape == (200, 16) and f.dtype == np.float32 and (f == 1).all()
        assert log.read_readout(0)["bias"].tolist() == list(range(10))
        assert log.checkpoints() == [(-1, 0, "optimised")]
    with RunLog.resume(path) as log:
        assert log.checkpoints() == [(-1, 0, "optimised")]
        assert log.read_readout(0)["bias"][3] == 3.0
    with RunReader(path) as r:
        assert r.checkpoints == [(-1, 0, "optimised")]
        assert r.summary()["checkpoints"][0]["unit"] is None


def test_features_validation_and_growth(tmp_path):
    path = tmp_path / "run.h5"
    with new_log(path) as log:
        with pytest.raises(RunLogError, match="not"):
            log.features(0, 0, "train", 0, np.ones((10, 15)))
        with pytest.raises(RunLogError, match="outside"):
            log.features(0, 0, "train", 595, np.ones((10, 16)))
        with pytest.raises(RunLogError, match="split"):
            log.features(0, 0, "val", 0, np.ones((10, 16)))
        log.features(0, 0, "train", 0, np.ones((100, 16)))
        log.features(0, 2, "test", 50, np.full((10, 16), 2.0))     # grows to 3 revisions
    with RunReader(path) as r:
        u = r.units[0]
        f0 = u.features("train", 0)
        assert np.isfinite(f0[:100]).all() and np.isnan(f0[100:]).all()
        assert u.feature_rows("train", 0) == 100
        t2 = u.features("test")
        assert np.isnan(t2[:50]).all() and (t2[50:60] == 2.0).all() and np.isnan(t2[60:]).all()
        assert u.feature_rows("test") == 60 and u.feature_rows("test", 1) == 0


def test_other_validation(tmp_path):
    path = tmp_path / "run.h5"
    log = new_log(path)
    with pytest.raises(RunLogError, match="state"):
        log.set_state("exploded")
    with pytest.raises(RunLogError, match="phase"):
        log.checkpoint(0, 0, "finished")
    with pytest.raises(RunLogError, match="accuracy kind"):
        log.accuracy(0, 0, "test", 0.5, "guess")
    with pytest.raises(RunLogError, match="fault record"):
        log.fault({"unit": 1})
    with pytest.raises(RunLogError, match="readout"):
        log.readout({"weight": np.ones((10, 8))}, 0)
    log.close()
    log.close()  # idempotent
    with pytest.raises(RunLogError, match="closed"):
        log.step(0, 0, 0, loss=0, i_xz=0, i_yz=0, state=b"")


def test_bad_layout(tmp_path):
    bad = make_layout()
    bad.units[0].param_shapes = {"weight": (16, -1)}
    with pytest.raises(RunLogError, match="negative"):
        new_log(tmp_path / "a.h5", bad)
    bad = make_layout()
    bad.units[0].param_shapes = {".": (1,)}
    with pytest.raises(RunLogError, match="invalid array name"):
        new_log(tmp_path / "b.h5", bad)
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "b.h5").exists()


def test_empty_split_and_scalar_params(tmp_path):
    layout = RunLayout(units=[UnitLayout("u", "crossbar", 2, 3, {"scale": ()}, {"g": (0, 3)}, 1)],
                       n_train=5, n_test=0, n_classes=2)
    path = tmp_path / "run.h5"
    with new_log(path, layout) as log:
        log.params(0, 0, "trained", {"scale": np.float64(2.5)})
        log.params(0, 0, "deployed", {"g": np.zeros((0, 3))})
        log.features(0, 0, "test", 0, np.zeros((0, 3)))
    with RunReader(path) as r:
        assert r.units[0].trained["scale"] == 2.5
        assert r.units[0].deployed["g"].shape == (0, 3)
        assert r.units[0].features("test").shape == (0, 3)
        r.verify()


def test_events_truncated_with_ellipsis(tmp_path):
    path = tmp_path / "run.h5"
    long = "é" * 1000
    with new_log(path) as log:
        log.event(WarningEvent(text=long, unit=1))
        log.event(InfoEvent(text="short"))
    with RunReader(path) as r:
        ev = r.events
    assert ev[0]["unit"] == 1 and ev[1]["unit"] is None
    assert ev[0]["message"].endswith("\u2026") and long.startswith(ev[0]["message"][:-1])
    assert len(ev[0]["message"].encode()) <= MESSAGE_BYTES


@given(st.text(max_size=300), st.integers(min_value=4, max_value=64))
def test_fixed_length_strings(text, nbytes):
    raw = _fixed(text, nbytes)
    assert len(raw) <= nbytes
    s = raw.decode("utf-8")                     # never a cut multi-byte character
    if len(text.encode()) <= nbytes:
        assert s == text
    else:
        assert s.endswith("\u2026") and text.startswith(s[:-1])


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True),
                          st.floats(allow_nan=True)), min_size=1, max_size=20))
def test_info_plane_roundtrip(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("h") / "run.h5"
    with new_log(path) as log:
        for s, (loss, ixz, iyz) in enumerate(rows):
            log.step(0, 0, s, loss=loss, i_xz=ixz, i_yz=iyz, state=b"x" * s)
    with RunReader(path) as r:
        ip = r.units[0].info_plane
        s = r.summary()
    np.testing.assert_array_equal(ip["loss"], [x[0] for x in rows])
    np.testing.assert_array_equal(ip["I_XZ"], [x[1] for x in rows])
    json.dumps(s, allow_nan=False)


# ----------------------------------------------------------------------------- optimiser state

def test_live_state_double_buffer(tmp_path):
    path = tmp_path / "run.h5"
    with new_log(path) as log:
        assert log.live_state(0, 0) is None
        log.step(0, 0, 0, loss=1, i_xz=1, i_yz=1, state=b"a" * 100)
        assert log.live_state(0, 0) == (0, b"a" * 100)
        log.step(0, 0, 1, loss=1, i_xz=1, i_yz=1, state=b"b" * 40)     # shorter state
        assert log.live_state(0, 0) == (1, b"b" * 40)
        log.step(0, 0, 2, loss=1, i_xz=1, i_yz=1, state=b"c" * 300)
        assert log.live_state(0, 0) == (2, b"c" * 300)
        assert log.live_state(0, 1) is None and log.live_state(1, 0) is None
        with h5py.File(path, "r", swmr=True) as f:
            slots = [f[f"units/0/optimiser/slot{k}"][...].tobytes() for k in (0, 1)]
            pointer = f["units/0/optimiser/pointer"][...].tolist()
        assert pointer == [0, 2, 0, 300]            # slots alternate 0, 1, 0
        assert slots[0][:300] == b"c" * 300 and slots[1][:40] == b"b" * 40
    with RunReader(path) as r:
        assert r.units[0].live_state == (0, 2, b"c" * 300)


# ----------------------------------------------------------------------------- live reading

def test_reader_while_writer_live_same_process(tmp_path):
    path = tmp_path / "run.h5"
    log = new_log(path)
    log.set_state("running")
    reader = RunReader(path)
    assert reader.state == "running" and reader.writer_alive is True
    for s in range(5):
        log.step(0, 0, s, loss=1.0, i_xz=2.0, i_yz=0.5, state=state_bytes(s))
    reader.refresh()
    assert list(reader.units[0].info_plane["step"]) == list(range(5))
    log.event(InfoEvent(text="hello"))
    log.features(0, 0, "train", 0, np.ones((10, 16)))
    reader.refresh()
    assert reader.events[-1]["message"] == "hello"
    assert reader.units[0].feature_rows("train") == 10
    # plain h5py, as the GUI / h5web would
    with h5py.File(path, "r", swmr=True) as f:
        ds = f["units/0/info_plane"]
        n = ds.shape[0]
        log.step(0, 0, 5, loss=1.0, i_xz=2.0, i_yz=0.5, state=b"")
        ds.refresh()
        assert ds.shape[0] == n + 1
    log.set_state("done")
    reader.refresh()
    assert reader.state == "done"
    log.close()
    reader.refresh()
    assert reader.writer_alive is False
    reader.close()


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from labpnn.events import InfoEvent
    from labpnn.runlog import RunLayout, RunLog, UnitLayout

    path, mode, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    layout = RunLayout(units=[UnitLayout("u0", "crossbar", 8, 4, {"w": (4, 8)}, {"w": (8, 4)},
                                         10**6)], n_train=5000, n_test=100, n_classes=3)
    if mode == "create":
        log = RunLog.create(path, layout, recipe={"name": "k"}, bench={}, provenance={})
        start = 0
    else:
        log = RunLog.resume(path)
        saved = log.live_state(0, 0)
        start = saved[0] + 1 if saved else 0
    log.set_state("running")
    rng = np.random.default_rng(start)
    s = start
    while s < limit:
        log.step(0, 0, s, loss=float(s), i_xz=s * 0.1, i_yz=s * 0.01,
                 state=s.to_bytes(8, "little") * 5000)
        if s % 7 == 0:
            log.event(InfoEvent(text=f"step {s}"))
        if s % 11 == 0:
            log.features(0, 0, "train", (s * 13) % 4900, rng.standard_normal((100, 4)))
        print(s, flush=True)
        s += 1
    log.set_state("done")
    log.close()
""")


def spawn_writer(tmp_path: Path, path: Path, mode: str, limit: int = 10**9):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(path), mode, str(limit)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_steps(proc, n: int) -> int:
    last = -1
    for _ in range(n):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"writer died: {proc.stderr.read()}")
        last = int(line)
    return last


def test_reader_while_writer_live_in_subprocess(tmp_path):
    path = tmp_path / "run.h5"
    proc = spawn_writer(tmp_path, path, "create", limit=400)
    try:
        read_steps(proc, 5)
        reader = RunReader(path)
        seen = []
        while proc.poll() is None:
            reader.refresh()
            steps = reader.units[0].info_plane["step"]
            assert (steps == np.arange(len(steps))).all()
            seen.append(len(steps))
            reader.summary()
            assert reader.writer_alive in (True, False)
        proc.stdout.read()
        assert proc.wait() == 0, proc.stderr.read()
        reader.refresh()
        assert len(reader.units[0].info_plane) == 400 and reader.state == "done"
        assert seen == sorted(seen) and len(set(seen)) > 1      # it watched rows arrive
        assert not reader.damaged
        reader.close()
    finally:
        proc.kill()
        proc.wait()



def test_a_committed_row_whose_chunk_the_index_lacks_is_noticed(tmp_path):
    from labpnn.runlog.reader import _chunk_missing

    with h5py.File(tmp_path / "t.h5", "w") as f:
        ds = f.create_dataset("t", shape=(10,), maxshape=(None,), chunks=(4,), dtype="i8")
        ds[0:4] = np.arange(4)  # chunks 1 (rows 4-7) and 2 (rows 8-9) not written
        assert not _chunk_missing(ds, 3)
        assert _chunk_missing(ds, 5) and _chunk_missing(ds, 9)
        ds[8] = 8
        assert not _chunk_missing(ds, 9)


def test_a_stale_chunk_index_is_read_afresh_from_a_reopened_file(tmp_path, monkeypatch):
    """A live reader left without a table's newest chunk in its index (the writer added it
    while the reader refreshed) opens the file again and reads the rows the writer flushed."""
    from labpnn.runlog import reader as reader_module

    path = tmp_path / "run.h5"
    log = new_log(path)
    for s in range(5):
        log.step(0, 0, s, loss=1.0, i_xz=2.0, i_yz=0.5, state=state_bytes(s))
    reader = RunReader(path)
    opened = []
    reopen = reader._open
    monkeypatch.setattr(reader, "_open", lambda: (opened.append(1), reopen())[1])
    stale = iter([True])
    monkeypatch.setattr(reader_module, "_chunk_missing", lambda ds, row: next(stale, False))
    assert list(reader.units[0].info_plane["step"]) == list(range(5))
    assert opened == [1]                        # once, for the stale index
    assert list(reader.units[0].info_plane["step"]) == list(range(5)) and opened == [1]
    reader.close()
    log.close()


DIES_AFTER_RESIZE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from test_runlog import new_log, state_bytes
    log = new_log(__import__("pathlib").Path(sys.argv[1]))
    log.set_state("running")
    for s in range(3):
        log.step(0, 0, s, loss=0.0, i_xz=0.0, i_yz=0.0, state=state_bytes(s))
    log._f["units/0/info_plane"].resize((5,))   # room made, rows not written, not counted
    log._f.flush()
    os._exit(0)                                 # the writer dies before its next record
""")


def test_rows_past_the_committed_count_stay_hidden_and_resume_drops_them(tmp_path):
    """A SWMR reader can see a table's new extent before its bytes: readers show only the
    rows meta/committed counts, and a resume cuts the rest."""
    path = tmp_path / "run.h5"
    script = tmp_path / "dies.py"
    script.write_text(DIES_AFTER_RESIZE)
    subprocess.run([sys.executable, str(script), str(path), str(Path(__file__).parent)],
                   check=True, timeout=120)
    with RunReader(path) as r:
        assert list(r.units[0].info_plane["step"]) == [0, 1, 2]
        assert len(r._file()["units/0/info_plane"]) == 5
    RunLog.resume(path).close()
    with h5py.File(path, "r") as f:
        assert list(f["units/0/info_plane"]["step"]) == [0, 1, 2]


# ----------------------------------------------------------------------------- crashes and resume

def kill_writer(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_then_read_and_resume(tmp_path):
    path = tmp_path / "run.h5"
    proc = spawn_writer(tmp_path, path, "create")
    last = read_steps(proc, 60)
    kill_writer(proc)

    # a killed SWMR writer leaves the file flagged open: only SWMR readers get in
    with pytest.raises(OSError):
        h5py.File(path, "r+")
    with RunReader(path) as r:
        steps = r.units[0].info_plane["step"]
        assert steps[0] == 0 and (np.diff(steps) == 1).all() and steps[-1] >= last
        rev, step, state = r.units[0].live_state
        assert state == step.to_bytes(8, "little") * 5000 and step >= last
        assert r.state == "running" and r.writer_alive is False
        json.dumps(r.summary(), allow_nan=False)
    inode = path.stat().st_ino

    # resume in another process, run to step 150, finish cleanly
    proc = spawn_writer(tmp_path, path, "resume", limit=150)
    proc.stdout.read()
    assert proc.wait() == 0, proc.stderr.read()
    copied = path.stat().st_ino != inode                # in place, unless a torn chunk ...
    assert not list(tmp_path.glob(".run.h5.*"))         # no temporary left behind
    with RunReader(path) as r:
        steps = r.units[0].info_plane["step"]
        assert list(steps) == list(range(150))          # every step exactly once
        assert [w["action"] for w in r.writers] == ["create", "resume", "close"]
        assert r.state == "done"
        assert copied == any(e["message"].startswith("resume:") for e in r.events)
        r.verify()


def test_resume_after_two_kills_in_process(tmp_path):
    path = tmp_path / "run.h5"
    for mode in ("create", "resume"):
        proc = spawn_writer(tmp_path, path, mode)
        read_steps(proc, 25)
        kill_writer(proc)
    log = RunLog.resume(path)
    saved = log.live_state(0, 0)
    assert saved is not None
    step, state = saved
    assert state == step.to_bytes(8, "little") * 5000
    for s in range(step + 1, step + 6):
        log.step(0, 0, s, loss=0.0, i_xz=0.0, i_yz=0.0, state=b"")
    log.set_state("done")
    log.close()
    with RunReader(path) as r:
        assert list(r.units[0].info_plane["step"]) == list(range(step + 6))
        r.verify()


def test_resume_drops_steps_past_saved_state(tmp_path):
    path = tmp_path / "run.h5"
    with new_log(path) as log:
        for s in range(5):
            log.step(0, 0, s, loss=1, i_xz=1, i_yz=1, state=state_bytes(s))
    # as if killed after the row was flushed but before the state pointer moved on
    with h5py.File(path, "r+") as f:
        ds = f["units/0/info_plane"]
        ds.resize((7,))
        ds[5] = (0, 5, 1, 1, 1, 0)
        ds[6] = (1, 0, 1, 1, 1, 0)
        ip1 = f["units/1/info_plane"]       # unit 1 never saved a state
        ip1.resize((1,))
        ip1[0] = (0, 0, 1, 1, 1, 0)
    inode = path.stat().st_ino
    log = RunLog.resume(path)                # cleanly closed: resumed in place
    assert path.stat().st_ino == inode
    assert log.live_state(0, 0) == (4, state_bytes(4))
    log.step(0, 0, 5, loss=2, i_xz=2, i_yz=2, state=b"")
    log.close()
    with RunReader(path) as r:
        assert list(r.units[0].info_plane["step"]) == list(range(6))
        assert r.units[0].info_plane["loss"][5] == 2
        assert r.units[1].info_plane.size == 0


def test_resume_waits_out_a_reader_polling_the_file(tmp_path):
    """A reader (a GUI refresh, a script polling) that holds the file while the run resumes
    delays the resume; it does not make it fail or copy the file."""
    path = tmp_path / "run.h5"
    new_log(path).close()
    inode = path.stat().st_ino
    reader = subprocess.Popen(  # another process: HDF5 locks the file against writers while it reads
        [sys.executable, "-c", "import time; from labpnn.runlog import RunReader; "
         f"r = RunReader({str(path)!r}); print('open', flush=True); time.sleep(0.5); r.close()"],
        stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "open"
    with RunLog.resume(path) as log:
        assert log.checkpoints() == []
    assert reader.wait(10) == 0
    assert path.stat().st_ino == inode  # resumed in place, not repaired by copying


def test_resume_redo_overwrites_revision(tmp_path):
    path = tmp_path / "run.h5"
    with new_log(path) as log:
        log.params(0, 0, "trained", trained(0, 1.0))
        log.features(0, 0, "train", 0, np.zeros((256, 16)))
    with RunLog.resume(path) as log:
        log.params(0, 0, "trained", trained(0, 5.0))
        log.features(0, 0, "train", 0, np.ones((256, 16)))
        assert log.checkpoints() == []
        log.checkpoint(0, 0, "optimised")
    with RunReader(path) as r:
        assert r.units[0].trained["bias"][1] == 5.0
        assert r.units[0].revisions == 1
        assert (r.units[0].features("train")[:256] == 1).all()
    with RunLog.resume(path) as log:
        assert log.checkpoints() == [(0, 0, "optimised")]


def test_resume_refuses_a_live_writer(tmp_path):
    path = tmp_path / "run.h5"
    proc = spawn_writer(tmp_path, path, "create")
    try:
        read_steps(proc, 3)
        with pytest.raises(RunLogError, match="still being written"):
            RunLog.resume(path)
        read_steps(proc, 3)                        # and the writer carried on
    finally:
        kill_writer(proc)


def test_resume_refuses_a_writer_open_in_this_process(tmp_path):
    path = tmp_path / "run.h5"
    log = new_log(path)
    with pytest.raises(RunLogError, match="open for writing"):
        RunLog.resume(path)
    log.close()
    RunLog.resume(path).close()


def test_reader_follows_a_resume_that_replaced_the_file(tmp_path):
    path = tmp_path / "run.h5"
    proc = spawn_writer(tmp_path, path, "create")
    read_steps(proc, 10)
    kill_writer(proc)
    reader = RunReader(path)
    assert len(reader.units[0].info_plane) >= 10
    log = RunLog.resume(path)
    step, _ = log.live_state(0, 0)
    log.step(0, 0, step + 1, loss=0, i_xz=0, i_yz=-1.0, state=b"")
    reader.refresh()                                   # reopens the new file
    ip = reader.units[0].info_plane
    assert list(ip["step"]) == list(range(step + 2)) and ip["I_YZ"][-1] == -1.0
    log.close()
    reader.close()


def test_torn_chunk_is_read_as_stored(tmp_path):
    """A write cut short by SIGKILL leaves a chunk whose checksum fails although the rows
    it already held are intact; the reader decodes it, notes it, and resume heals it."""
    path = tmp_path / "run.h5"
    with new_log(path) as log:
        for s in range(10):
            log.step(0, 0, s, loss=1, i_xz=1, i_yz=1, state=b"")
    with h5py.File(path, "r") as f:
        info = f["units/0/info_plane"].id.get_chunk_info_by_coord((0,))
        itemsize = f["units/0/info_plane"].dtype.itemsize
    with open(path, "r+b") as fh:      # bytes of a row that never became visible
        fh.seek(info.byte_offset + 12 * itemsize)
        fh.write(b"\x5a" * itemsize)   # (not 0xff: Fletcher-32 cannot tell 0xffff from 0)
    with RunReader(path) as r:
        assert list(r.units[0].info_plane["step"]) == list(range(10))
        assert r.damaged
        assert r.summary()["damaged"]
        with pytest.raises(RunLogError, match="info_plane"):
            r.verify()
    # in place resume keeps the bytes; a killed writer's file is copied, which heals them
    from labpnn.runlog.repair import _repair_by_copy
    _repair_by_copy(path, make_layout())
    with RunReader(path) as r:
        r.verify()
        assert list(r.units[0].info_plane["step"]) == list(range(10))
        assert any("resume" in e["message"] for e in r.events)


# ----------------------------------------------------------------------------- damaged files

@pytest.fixture
def finished(tmp_path) -> Path:
    path = tmp_path / "finished.h5"
    full_run(path)
    return path


def read_all(path: Path) -> None:
    r = RunReader(path)
    r.summary()
    for u in r.units:
        for split in ("train", "test"):
            u.features(split)
        u.trained
        u.deployed
        u.live_state
    r.verify()


def test_truncated_file(finished, tmp_path):
    bad = tmp_path / "half.h5"
    shutil.copy(finished, bad)
    os.truncate(bad, bad.stat().st_size // 2)
    with pytest.raises(RunLogError, match=r"half\.h5.*truncated"):
        RunReader(bad)
    with pytest.raises(RunLogError, match=r"half\.h5"):
        RunLog.resume(bad)


def scribble(src: Path, dst: Path, offset: int, nbytes: int, seed: int = 1) -> None:
    shutil.copy(src, dst)
    with open(dst, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.random.default_rng(seed).bytes(nbytes))


def chunk_offset(path: Path, name: str) -> int:
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(0)
    return info.byte_offset + info.size // 2


@pytest.mark.parametrize("name", ["units/0/features/train", "units/1/info_plane", "events",
                                  "meta/recipe", "units/0/params/deployed/g_read"])
def test_overwritten_bytes_in_the_middle(finished, tmp_path, name):
    bad = tmp_path / "scribbled.h5"
    scribble(finished, bad, chunk_offset(finished, name), 64)
    t0 = time.monotonic()
    with pytest.raises(RunLogError, match=r"scribbled\.h5.*damaged"):
        read_all(bad)
    assert time.monotonic() - t0 < 20          # no minutes of SWMR read retries


def test_scribbles_anywhere_give_run_log_errors_only(finished, tmp_path):
    """Bytes overwritten anywhere: RunLogError or (spare slot, unused space) nothing;
    never another exception, never a hang."""
    size = finished.stat().st_size
    rng = np.random.default_rng(7)
    errors = 0
    for k, offset in enumerate(rng.integers(0, size - 256, 12)):
        bad = tmp_path / f"scribbled{k}.h5"
        scribble(finished, bad, int(offset), 256, seed=k)
        t0 = time.monotonic()
        try:
            read_all(bad)
        except RunLogError as exc:
            assert bad.name in str(exc)
            errors += 1
        assert time.monotonic() - t0 < 20
    assert errors >= 6


def test_overwritten_half_the_file(finished, tmp_path):
    bad = tmp_path / "scribbled.h5"
    shutil.copy(finished, bad)
    size = bad.stat().st_size
    with open(bad, "r+b") as fh:
        fh.seek(size // 4)
        fh.write(np.random.default_rng(2).bytes(size // 2))
    with pytest.raises(RunLogError, match=r"scribbled\.h5.*damaged"):
        read_all(bad)
    with pytest.raises(RunLogError, match=r"scribbled\.h5"):
        RunLog.resume(bad)


def test_not_hdf5(tmp_path):
    bad = tmp_path / "random.h5"
    bad.write_bytes(np.random.default_rng(3).bytes(10_000))
    with pytest.raises(RunLogError, match=r"random\.h5.*not an HDF5 file"):
        RunReader(bad)
    with pytest.raises(RunLogError, match=r"random\.h5.*not an HDF5 file"):
        RunLog.resume(bad)
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(RunLogError, match="empty.h5"):
        RunReader(empty)


def test_hdf5_but_not_a_run(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.arange(10)
    with pytest.raises(RunLogError, match=r"other\.h5.*not a labpnn run"):
        RunReader(other)
    with pytest.raises(RunLogError, match=r"other\.h5.*not a labpnn run"):
        RunLog.resume(other)


def test_run_with_missing_parts(finished, tmp_path):
    bad = tmp_path / "partial.h5"
    shutil.copy(finished, bad)
    with h5py.File(bad, "r+") as f:
        del f["events"]
    with pytest.raises(RunLogError, match=r"partial\.h5.*missing events"):
        RunReader(bad)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(RunLogError, match="no such run file"):
        RunReader(tmp_path / "nothing.h5")
    with pytest.raises(RunLogError, match="no such run file"):
        RunLog.resume(tmp_path / "nothing.h5")
    with pytest.raises(RunLogError, match="directory"):
        RunReader(tmp_path)


def test_newer_format_is_refused(finished, tmp_path):
    newer = tmp_path / "newer.h5"
    shutil.copy(finished, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(RunLogError, match="newer labpnn"):
        RunReader(newer)


# ----------------------------------------------------------------------------- hostile files

def bit_flipped(src: Path, dst: Path, seed: int, flips: int = 8) -> bytes:
    """A copy of `src` with `flips` random bits flipped (seeded); returns its bytes."""
    raw = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    for offset in rng.integers(0, len(raw), flips):
        raw[offset] ^= 1 << int(rng.integers(8))
    dst.write_bytes(bytes(raw))
    return bytes(raw)


RESUME_EACH = textwrap.dedent("""
    import sys
    from labpnn.errors import RunLogError
    from labpnn.runlog import RunLog
    for path in sys.argv[1:]:
        try:
            RunLog.resume(path).close()
            print("resumed", flush=True)
        except RunLogError as exc:
            print("refused", str(exc).replace("\\n", " "), flush=True)
""")


def resume_each(paths: list[Path], timeout: float = 120) -> list[str]:
    """RunLog.resume of each file in another process (a hang fails, never blocks the suite):
    one line per file, "resumed" or "refused <message>"; any other exception fails."""
    out = subprocess.run([sys.executable, "-c", RESUME_EACH, *map(str, paths)],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.splitlines()


def test_resuming_damaged_copies_refuses_them_untouched(tmp_path):
    """Bit-flipped copies of an aborted run: each is resumed (the flips hit nothing read) or
    refused with a RunLogError naming it, promptly, and a refused file keeps every byte."""
    base = tmp_path / "aborted.h5"
    full_run(base, final="idle")
    paths, originals = [], []
    for seed in range(24):
        paths.append(tmp_path / f"flipped{seed}.h5")
        originals.append(bit_flipped(base, paths[-1], seed))
    lines = resume_each(paths)
    assert len(lines) == len(paths)
    refused = 0
    for path, raw, line in zip(paths, originals, lines):
        if line.startswith("refused"):
            refused += 1
            assert path.name in line and ("damaged" in line or "truncated" in line), line
            assert path.read_bytes() == raw, f"{path.name} was changed: {line}"
        else:
            assert line == "resumed"
            with RunReader(path) as r:
                assert [w["action"] for w in r.writers][-2:] == ["resume", "close"]
    assert refused >= 12


def test_resuming_a_finished_run_changes_nothing(finished):
    before = finished.read_bytes()
    with pytest.raises(RunLogError, match=r"finished\.h5: the run finished \(state done\)"):
        RunLog.resume(finished)
    assert finished.read_bytes() == before


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "run.h5"
    os.mkfifo(fifo)
    out = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom labpnn.errors import RunLogError\n"
         "from labpnn.runlog import RunLog, RunReader\nfor f in (RunReader, RunLog.resume):\n"
         "    try:\n        f(sys.argv[1])\n    except RunLogError as exc:\n        print(exc)",
         str(fifo)], capture_output=True, text=True, timeout=60)
    assert out.stdout.count("run.h5: is a FIFO (named pipe), not a run file") == 2, out


def as_other_user(fn) -> str:
    """fn() in a forked child running as user nobody (uid/gid 65534): "ok", or the
    RunLogError's message. A root test can show the kernel's refusal this way only: root
    itself may write any file."""
    import fcntl  # noqa: F401  (loaded here: nobody cannot read the interpreter's files)
    import pwd  # noqa: F401

    import psutil  # noqa: F401
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child
        try:
            os.close(rfd)
            os.setgid(65534)
            os.setuid(65534)
            try:
                fn()
                msg = "ok"
            except RunLogError as exc:
                msg = str(exc)
            except BaseException as exc:
                msg = f"{type(exc).__name__}: {exc}"
            os.write(wfd, msg.encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        msg = fh.read().decode()
    os.waitpid(pid, 0)
    return msg


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.parametrize("killed", [False, True])
def test_resume_never_replaces_a_file_its_owner_protected(tmp_path, killed):
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="labpnn-protected-"))   # nobody reaches /tmp only
    try:
        folder.chmod(0o777)                       # anyone may create and rename files here
        path = folder / "theirs.h5"
        if killed:
            proc = spawn_writer(tmp_path, path, "create")
            read_steps(proc, 5)
            kill_writer(proc)
        else:
            full_run(path, final="idle")
        path.chmod(0o444)                          # root's file, protected
        before, st = path.read_bytes(), path.stat()
        msg = as_other_user(lambda: RunLog.resume(path).close())
        assert "theirs.h5: cannot resume: you may not write this run file" in msg, msg
        assert "-r--r--r--" in msg and "owner root" in msg
        after = path.stat()
        assert (after.st_ino, after.st_uid, after.st_mode) == (st.st_ino, st.st_uid, st.st_mode)
        assert path.read_bytes() == before
        path.chmod(0o666)                          # ... unless they may write it
        assert as_other_user(lambda: RunLog.resume(path).close()) == "ok"
        with RunReader(path) as r:
            assert r.writers[-2]["action"] == "resume"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


PLAIN_READER = textwrap.dedent("""
    import sys, h5py
    with h5py.File(sys.argv[1], "r", swmr=True) as f:   # the pattern of docs/runlog.md
        ip = f["units/0/info_plane"]
        for line in sys.stdin:
            ip.refresh()
            print(ip.shape[0], int(ip[-1]["step"]), flush=True)
""")


def test_a_plain_h5py_reader_follows_a_resume(tmp_path):
    """A reader holding the file with h5py (refresh() in a loop) across a kill and a resume
    sees the rows the resumed run appends: the file is resumed in place."""
    path = tmp_path / "run.h5"
    proc = spawn_writer(tmp_path, path, "create")
    read_steps(proc, 20)
    kill_writer(proc)
    reader = subprocess.Popen([sys.executable, "-c", PLAIN_READER, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        def look() -> tuple[int, int]:
            reader.stdin.write("\n")
            reader.stdin.flush()
            n, step = reader.stdout.readline().split()
            return int(n), int(step)
        rows, _ = look()
        log = RunLog.resume(path)
        step, _ = log.live_state(0, 0)
        for s in range(step + 1, step + 31):
            log.step(0, 0, s, loss=0, i_xz=0, i_yz=0, state=b"")
        assert look() == (step + 31, step + 30)
        log.close()
    finally:
        reader.stdin.close()
        assert reader.wait(10) == 0


def test_annotate_adds_analyses_to_a_finished_run_only(tmp_path):
    path = tmp_path / "run.h5"
    log = new_log(path)
    log.set_state("running")
    log.close()
    with pytest.raises(RunLogError, match="not finished"):
        RunLog.annotate(path)
    done = tmp_path / "done.h5"
    full_run(done)
    log = RunLog.annotate(done)
    log.analysis({"test": "noise", "setting": 5.0, "value": 81.5, "unit": "%"})
    with pytest.raises(RunLogError, match="only analysis records"):
        log.set_state("running")
    with pytest.raises(RunLogError, match="at least 'test'"):
        log.analysis({"value": 1})
    log.close()
    with RunReader(done) as r:
        assert r.state == "done"
        [rec] = r.summary()["analyses"]
        assert (rec["test"], rec["setting"], rec["value"]) == ("noise", 5.0, 81.5)
        assert [w["action"] for w in r.writers][-2:] == ["annotate", "close"]
        assert "  - noise 5.0: 81.5%" in format_summary(r.summary()).splitlines()
        r.verify()
